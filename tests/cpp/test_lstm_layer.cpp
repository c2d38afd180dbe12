// lstm_layer against a naive step-by-step LibTorch reference, its backward against autograd of that
// reference, and every bad-input branch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/recurrent_layers.h"
#include "test_util.h"

namespace {

using at::Tensor;

struct Params {
  Tensor w_ih, w_hh, b_ih, b_hh;
};

Params make_params(int64_t I, int64_t H, at::ScalarType dtype, bool bias) {
  auto o = torch::TensorOptions().dtype(dtype);
  Params p{torch::randn({4 * H, I}, o) * 0.3, torch::randn({4 * H, H}, o) * 0.3, {}, {}};
  if (bias) {
    p.b_ih = torch::randn({4 * H}, o) * 0.3;
    p.b_hh = torch::randn({4 * H}, o) * 0.3;
  }
  return p;
}

// The LSTM written out step by step with ATen ops (independent of the kernel under test).
std::tuple<Tensor, Tensor, Tensor> reference(const Tensor& x, Tensor h, Tensor c, const Params& p) {
  std::vector<Tensor> outs;
  for (int64_t t = 0; t < x.size(0); ++t) {
    Tensor gates = x[t].matmul(p.w_ih.t()) + h.matmul(p.w_hh.t());
    if (p.b_ih.defined()) gates = gates + p.b_ih + p.b_hh;
    auto ch = gates.chunk(4, 1);
    Tensor i = ch[0].sigmoid(), f = ch[1].sigmoid(), g = ch[2].tanh(), o = ch[3].sigmoid();
    c = f * c + i * g;
    h = o * c.tanh();
    outs.push_back(h);
  }
  return {torch::stack(outs), h, c};
}

c10::optional<Tensor> opt(const Tensor& t) { return t.defined() ? c10::optional<Tensor>(t) : c10::nullopt; }

class LSTMLayerShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>> {};

TEST_P(LSTMLayerShapes, ForwardAndBackwardMatchReference) {
  auto [T, B, I, H, bias] = GetParam();
  torch::manual_seed(T * 1000 + B * 100 + I * 10 + H);
  const auto dtype = at::kDouble;
  Params p = make_params(I, H, dtype, bias);
  Tensor x = torch::randn({T, B, I}, at::TensorOptions().dtype(dtype));
  Tensor h0 = torch::randn({B, H}, at::TensorOptions().dtype(dtype));
  Tensor c0 = torch::randn({B, H}, at::TensorOptions().dtype(dtype));
  std::vector<Tensor*> leaves{&x, &h0, &c0, &p.w_ih, &p.w_hh};
  if (bias) {
    leaves.push_back(&p.b_ih);
    leaves.push_back(&p.b_hh);
  }
  for (Tensor* t : leaves) t->requires_grad_(true);

  auto [out, hn, cn] = torch_rnn_ext::lstm_layer(x, h0, c0, p.w_ih, p.w_hh, opt(p.b_ih), opt(p.b_hh));
  auto [rout, rhn, rcn] = reference(x, h0, c0, p);
  EXPECT_TRUE(torch::allclose(out, rout, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(hn, rhn, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(cn, rcn, 1e-12, 1e-12));

  // A loss that reaches every output with different weights.
  Tensor wo = torch::randn_like(out), wh = torch::randn_like(hn), wc = torch::randn_like(cn);
  auto grads = torch::autograd::grad({(out * wo).sum() + (hn * wh).sum() + (cn * wc).sum()},
                                     [&] { std::vector<Tensor> v; for (auto* t : leaves) v.push_back(*t); return v; }());
  auto rgrads = torch::autograd::grad({(rout * wo).sum() + (rhn * wh).sum() + (rcn * wc).sum()},
                                      [&] { std::vector<Tensor> v; for (auto* t : leaves) v.push_back(*t); return v; }());
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(torch::allclose(grads[i], rgrads[i], 1e-10, 1e-10)) << "gradient " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, LSTMLayerShapes,
                         ::testing::Values(std::make_tuple(1, 1, 1, 1, true), std::make_tuple(5, 3, 4, 6, true),
                                           std::make_tuple(7, 1, 3, 5, false),
                                           std::make_tuple(3, 4, 9, 2, true),
                                           std::make_tuple(12, 2, 5, 17, false)));

TEST(LSTMLayer, Float32MatchesReference) {
  torch::manual_seed(0);
  Params p = make_params(8, 16, at::kFloat, true);
  Tensor x = torch::randn({10, 4, 8});
  auto [out, hn, cn] = torch_rnn_ext::lstm_layer(x, c10::nullopt, c10::nullopt, p.w_ih, p.w_hh, p.b_ih, p.b_hh);
  auto [rout, rhn, rcn] = reference(x, torch::zeros({4, 16}), torch::zeros({4, 16}), p);
  EXPECT_TRUE(torch::allclose(out, rout, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(cn, rcn, 1e-5, 1e-5));
}

TEST(LSTMLayer, ReverseEqualsFlippedForward) {
  torch::manual_seed(1);
  Params p = make_params(3, 5, at::kDouble, true);
  Tensor x = torch::randn({6, 2, 3}, at::kDouble);
  auto [out, hn, cn] = torch_rnn_ext::lstm_layer(x, c10::nullopt, c10::nullopt, p.w_ih, p.w_hh, p.b_ih, p.b_hh,
                                                 c10::nullopt, /*reverse=*/true);
  auto [rout, rhn, rcn] = reference(x.flip(0), torch::zeros({2, 5}, at::kDouble), torch::zeros({2, 5}, at::kDouble), p);
  EXPECT_TRUE(torch::allclose(out, rout.flip(0), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(hn, rhn, 1e-12, 1e-12));
}

using torch_rnn_ext_test::expect_error;

TEST(LSTMLayer, BadInputsRaise) {
  Params p = make_params(3, 4, at::kFloat, true);
  Tensor x = torch::randn({5, 2, 3});
  auto call = [&](Tensor in, c10::optional<Tensor> hx, c10::optional<Tensor> cx, Tensor wi, Tensor wh,
                  c10::optional<Tensor> bi, c10::optional<Tensor> bh) {
    return [=] { torch_rnn_ext::lstm_layer(in, hx, cx, wi, wh, bi, bh); };
  };
  expect_error(call(torch::randn({5, 3}), {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "input: expected a 3-D");
  expect_error(call(torch::randn({0, 2, 3}), {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "at least one timestep");
  expect_error(call(x, {}, {}, torch::randn({16, 4}), p.w_hh, p.b_ih, p.b_hh),
               "input: expected input_size 4 (the columns of weight_ih), got input of size [5, 2, 3]");
  expect_error(call(x, {}, {}, torch::randn({15, 3}), p.w_hh, p.b_ih, p.b_hh), "weight_ih: expected 16 rows");
  expect_error(call(x, {}, {}, p.w_ih, torch::randn({12, 4}), p.b_ih, p.b_hh), "weight_hh: expected size");
  expect_error(call(x, {}, {}, p.w_ih, p.w_hh, torch::randn({15}), p.b_hh), "bias_ih: expected size");
  expect_error(call(x, {}, {}, p.w_ih, p.w_hh, p.b_ih, torch::randn({16, 1})), "bias_hh: expected size");
  expect_error(call(x, torch::randn({3, 4}), {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "hx: expected size [2, 4]");
  expect_error(call(x, {}, torch::randn({2, 5}), p.w_ih, p.w_hh, p.b_ih, p.b_hh), "cx: expected size [2, 4]");
  expect_error(call(x.to(at::kDouble), {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "weight_hh: expected dtype");
  expect_error(call(x.to(at::kInt), {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "input: expected dtype float32");
  expect_error(call(x, torch::randn({2, 4}, at::kDouble), {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh), "hx: expected dtype");
  // A meta input with CPU weights goes to the Meta kernel, which names the first argument not on meta.
  expect_error(call(x.to(torch::Device("meta")), {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh),
               "weight_hh: expected a tensor on meta (the device of the other arguments), got a tensor on cpu");
  // Packed input: batch_sizes must be int64, positive, non-increasing, and sum to the rows of input.
  Tensor packed = torch::randn({6, 3});
  auto packed_call = [&](Tensor bs) {
    return [=] { torch_rnn_ext::lstm_layer(packed, {}, {}, p.w_ih, p.w_hh, p.b_ih, p.b_hh, bs); };
  };
  expect_error(packed_call(torch::tensor({3, 2, 1}, at::kInt)), "batch_sizes: expected dtype int64");
  expect_error(packed_call(torch::tensor({2, 3, 1}, at::kLong)), "non-increasing");
  expect_error(packed_call(torch::tensor({3, 2, 0, 1}, at::kLong)), "non-increasing");
  expect_error(packed_call(torch::tensor({3, 2}, at::kLong)), "batch_sizes sum to 5 but input has 6 rows");
}

TEST(LSTMLayer, NonContiguousInputsGiveTheSameResult) {
  torch::manual_seed(2);
  Params p = make_params(3, 4, at::kDouble, true);
  Tensor x = torch::randn({2, 5, 3}, at::kDouble).transpose(0, 1);  // (5, 2, 3), not contiguous
  Tensor wih = torch::randn({3, 16}, at::kDouble).t();
  auto [a, ah, ac] = torch_rnn_ext::lstm_layer(x, {}, {}, wih, p.w_hh, p.b_ih, p.b_hh);
  auto [b, bh, bc] = torch_rnn_ext::lstm_layer(x.contiguous(), {}, {}, wih.contiguous(), p.w_hh, p.b_ih, p.b_hh);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(ac, bc));
}

}  // namespace
