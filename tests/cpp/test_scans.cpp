// selective_scan and wkv4 against naive step-by-step LibTorch references, their backward against
// autograd of those references, and bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/selective_scan.h"
#include "ops/wkv4.h"
#include "test_util.h"

namespace {

using at::Tensor;

const auto kF64 = at::TensorOptions().dtype(at::kDouble);

// The selective scan written out with ATen ops: B varying (batch, N, L), C constant (dim, N).
std::tuple<Tensor, Tensor> scan_reference(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                          const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias,
                                          const Tensor& h0) {
  Tensor dt = torch::softplus(delta + bias.unsqueeze(-1));
  Tensor h = h0;
  std::vector<Tensor> ys;
  for (int64_t t = 0; t < u.size(2); ++t) {
    Tensor dtt = dt.select(2, t).unsqueeze(-1);
    h = torch::exp(dtt * A) * h + dtt * B.select(2, t).unsqueeze(1) * u.select(2, t).unsqueeze(-1);
    ys.push_back((h * C).sum(-1) + D * u.select(2, t));
  }
  return {torch::stack(ys, -1) * torch::silu(z), h};
}

// y_t of wkv4 from its definition (fine for moderate k).
Tensor wkv_reference(const Tensor& td, const Tensor& tf, const Tensor& k, const Tensor& v) {
  Tensor w = -torch::exp(td);
  std::vector<Tensor> ys;
  for (int64_t t = 0; t < k.size(1); ++t) {
    Tensor num = torch::exp(tf + k.select(1, t)) * v.select(1, t);
    Tensor den = torch::exp(tf + k.select(1, t));
    for (int64_t i = 0; i < t; ++i) {
      Tensor e = torch::exp(double(t - 1 - i) * w + k.select(1, i));
      num = num + e * v.select(1, i);
      den = den + e;
    }
    ys.push_back(num / den);
  }
  return torch::stack(ys, 1);
}

std::vector<Tensor> grads(const Tensor& loss, const std::vector<Tensor>& xs) {
  return torch::autograd::grad({loss}, xs);
}

TEST(SelectiveScan, ForwardAndBackwardMatchReference) {
  torch::manual_seed(0);
  const int64_t b = 2, d = 5, L = 70, N = 3;  // 70 steps cross a saved-state boundary
  std::vector<Tensor> xs{torch::randn({b, d, L}, kF64), torch::randn({b, d, L}, kF64) * 0.5,
                         -torch::rand({d, N}, kF64), torch::randn({b, N, L}, kF64), torch::randn({d, N}, kF64),
                         torch::randn({d}, kF64), torch::randn({b, d, L}, kF64), torch::randn({d}, kF64),
                         torch::randn({b, d, N}, kF64)};
  for (auto& x : xs) x.requires_grad_(true);
  auto [out, last] = torch_rnn_ext::selective_scan(xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7],
                                                   /*delta_softplus=*/true, xs[8]);
  auto [rout, rlast] = scan_reference(xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7], xs[8]);
  EXPECT_TRUE(torch::allclose(out, rout, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(last, rlast, 1e-12, 1e-12));
  Tensor wo = torch::randn_like(out), wl = torch::randn_like(last);
  auto g = grads((out * wo).sum() + (last * wl).sum(), xs);
  auto rg = grads((rout * wo).sum() + (rlast * wl).sum(), xs);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(torch::allclose(g[i], rg[i], 1e-10, 1e-10)) << "gradient " << i;
}

TEST(WKV4, ForwardAndBackwardMatchReference) {
  torch::manual_seed(1);
  const int64_t b = 2, T = 70, C = 67;  // crosses a saved-state boundary and a channel block
  std::vector<Tensor> xs{torch::randn({C}, kF64), torch::randn({C}, kF64), torch::randn({b, T, C}, kF64),
                         torch::randn({b, T, C}, kF64)};
  for (auto& x : xs) x.requires_grad_(true);
  auto [y, state] = torch_rnn_ext::wkv4(xs[0], xs[1], xs[2], xs[3]);
  Tensor ry = wkv_reference(xs[0], xs[1], xs[2], xs[3]);
  EXPECT_TRUE(torch::allclose(y, ry, 1e-12, 1e-12));
  Tensor wy = torch::randn_like(y);
  auto g = grads((y * wy).sum(), xs);
  auto rg = grads((ry * wy).sum(), xs);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(torch::allclose(g[i], rg[i], 1e-10, 1e-10)) << "gradient " << i;
  // Two calls with the carried state equal one.
  auto [y1, s1] = torch_rnn_ext::wkv4(xs[0], xs[1], xs[2].slice(1, 0, 30), xs[3].slice(1, 0, 30));
  auto [y2, s2] = torch_rnn_ext::wkv4(xs[0], xs[1], xs[2].slice(1, 30), xs[3].slice(1, 30), s1);
  EXPECT_TRUE(torch::equal(torch::cat({y1, y2}, 1), y));
  EXPECT_TRUE(torch::equal(s2, state));
}

using torch_rnn_ext_test::expect_error;

TEST(SelectiveScan, BadInputsRaise) {
  Tensor u = torch::randn({2, 6, 5}), A = -torch::rand({6, 4}), B = torch::randn({6, 4});
  auto call = [&](Tensor uu, Tensor dd, Tensor AA, Tensor BB, Tensor CC) {
    return [=] { torch_rnn_ext::selective_scan(uu, dd, AA, BB, CC); };
  };
  expect_error(call(torch::randn({6, 5}), u, A, B, B), "u: expected a 3-D tensor");
  expect_error(call(u, torch::randn({2, 6, 4}), A, B, B), "delta: expected size [2, 6, 5]");
  expect_error(call(u, u, torch::randn({5, 4}), B, B), "A: expected size (dim, d_state) = (6, d_state)");
  expect_error(call(u, u, A, torch::randn({2, 4, 4, 5}), B), "B: the number of groups G = 4");
  expect_error(call(u, u, A, B, torch::randn({2, 3, 5})), "C: d_state (size 1) is 3 but A has d_state 4");
  expect_error(call(u, u.to(at::kDouble), A, B, B), "delta: expected dtype");
  expect_error([&] { torch_rnn_ext::selective_scan(u, u, A, B, B, torch::randn({5})); }, "D: expected size [6]");
  expect_error([&] { torch_rnn_ext::selective_scan(u, u, A, B, B, {}, {}, {}, false, torch::randn({2, 6, 3})); },
               "initial_state: expected size [2, 6, 4]");
}

TEST(WKV4, BadInputsRaise) {
  Tensor w = torch::randn({5}), k = torch::randn({2, 4, 5});
  expect_error([&] { torch_rnn_ext::wkv4(w, w, torch::randn({4, 5}), k); }, "k: expected a 3-D tensor");
  expect_error([&] { torch_rnn_ext::wkv4(w, w, k, torch::randn({2, 4, 6})); }, "v: expected size [2, 4, 5]");
  expect_error([&] { torch_rnn_ext::wkv4(torch::randn({4}), w, k, k); }, "time_decay: expected size [5]");
  expect_error([&] { torch_rnn_ext::wkv4(w, w.to(at::kDouble), k, k); }, "time_first: expected dtype");
  expect_error([&] { torch_rnn_ext::wkv4(w, w, k, k, torch::randn({2, 2, 5})); }, "state: expected size [2, 3, 5]");
}

}  // namespace
