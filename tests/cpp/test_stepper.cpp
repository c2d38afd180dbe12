// torch_rnn_ext::Stepper against the layer ops called one step at a time (bitwise) and over the whole
// sequence in one call (to rounding), for every cell, dtype and batch regime (1 row, packed-weight rows,
// rows past the input product's packing threshold, rows past the packed steps), at 1 and 2 torch threads;
// its state handling; and every bad-input branch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <string>
#include <tuple>
#include <vector>

#include "api/stepper.h"
#include "ops/recurrent_layers.h"
#include "test_util.h"

namespace {

using at::Tensor;
using torch_rnn_ext::Stepper;
using torch_rnn_ext_test::expect_error;

int64_t gates_of(const std::string& mode) { return mode == "lstm" ? 4 : mode == "gru" ? 3 : 1; }

// One layer op call over x (T, B, I) from (h, c): (output, h_n, c_n); c undefined but for an LSTM.
std::tuple<Tensor, Tensor, Tensor> layer(const std::string& mode, const Tensor& x, const Tensor& h, const Tensor& c,
                                         const std::vector<Tensor>& w) {
  if (mode == "lstm") return torch_rnn_ext::lstm_layer(x, h, c, w[0], w[1], w[2], w[3]);
  auto f = mode == "gru" ? torch_rnn_ext::gru_layer
                         : mode == "rnn_tanh" ? torch_rnn_ext::rnn_tanh_layer : torch_rnn_ext::rnn_relu_layer;
  auto [out, hn] = f(x, h, w[0], w[1], w[2], w[3], c10::nullopt, false);
  return {out, hn, Tensor()};
}

class StepperCases : public ::testing::TestWithParam<std::tuple<std::string, at::ScalarType, int64_t, int>> {};

TEST_P(StepperCases, EqualsTheLayerOpStepByStep) {
  const auto [mode, dtype, B, threads] = GetParam();
  const int saved_threads = at::get_num_threads();
  at::set_num_threads(threads);
  torch::manual_seed(B * 7 + threads);
  const int64_t T = 6, I = 19, H = 24, G = gates_of(mode);
  const auto o = at::TensorOptions().dtype(dtype);
  const std::vector<Tensor> w{torch::randn({G * H, I}, o) * 0.3, torch::randn({G * H, H}, o) * 0.3,
                              torch::randn({G * H}, o) * 0.3, torch::randn({G * H}, o) * 0.3};
  const Tensor x = torch::randn({T, B, I}, o);
  const Tensor h0 = torch::randn({B, H}, o), c0 = mode == "lstm" ? torch::randn({B, H}, o) : Tensor();

  Stepper stepper(mode, w[0], w[1], w[2], w[3], B);
  stepper.set_state(h0, c0.defined() ? c10::optional<Tensor>(c0) : c10::nullopt);
  Tensor h = h0, c = c0;
  std::vector<Tensor> outs;
  for (int64_t t = 0; t < T; ++t) {
    const Tensor& got = stepper.step(x[t]);
    auto [out, hn, cn] = layer(mode, x[t].unsqueeze(0), h, c, w);
    EXPECT_TRUE(torch::equal(got, hn)) << mode << " step " << t << ": max diff " << (got - hn).abs().max();
    if (c.defined()) EXPECT_TRUE(torch::equal(stepper.c(), cn)) << mode << " step " << t;
    h = hn;
    c = cn;
    outs.push_back(got.clone());
  }
  // The whole sequence in one call: its input product spans every step, so equal to rounding.
  auto [out, hn, cn] = layer(mode, x, h0, c0, w);
  const double tol = dtype == at::kDouble ? 1e-12 : 1e-5;
  EXPECT_TRUE(torch::allclose(torch::stack(outs), out, tol, tol)) << mode;
  at::set_num_threads(saved_threads);
}

std::string case_name(const ::testing::TestParamInfo<StepperCases::ParamType>& info) {
  const auto& [mode, dtype, B, threads] = info.param;
  return mode + (dtype == at::kDouble ? "_f64" : "_f32") + "_batch" + std::to_string(B) + "_threads" +
         std::to_string(threads);
}

INSTANTIATE_TEST_SUITE_P(AllCells, StepperCases,
                         ::testing::Combine(::testing::Values("lstm", "gru", "rnn_tanh", "rnn_relu"),
                                            ::testing::Values(at::kFloat, at::kDouble),
                                            ::testing::Values(1, 3, 9, 20), ::testing::Values(1, 2)),
                         case_name);

TEST(Stepper, StateAndReset) {
  const auto w_ih = torch::randn({8, 3}), w_hh = torch::randn({8, 2});
  Stepper s("lstm", w_ih, w_hh);
  EXPECT_EQ(s.batch(), 1);
  EXPECT_EQ(s.input_size(), 3);
  EXPECT_EQ(s.hidden_size(), 2);
  EXPECT_TRUE(torch::equal(s.h(), torch::zeros({1, 2})));
  const Tensor x = torch::randn({1, 3});
  const Tensor first = s.step(x).clone();
  s.step(x);
  EXPECT_FALSE(torch::equal(s.h(), first));
  s.reset();
  EXPECT_TRUE(torch::equal(s.h(), torch::zeros({1, 2})));
  EXPECT_TRUE(torch::equal(s.c(), torch::zeros({1, 2})));
  EXPECT_TRUE(torch::equal(s.step(x), first));  // the weights were copied: the state alone carried the past
  Stepper gru("gru", torch::randn({6, 3}), torch::randn({6, 2}));
  EXPECT_FALSE(gru.c().defined());
}

TEST(Stepper, BadInputNamesTheArgument) {
  const auto w_ih = torch::randn({8, 3}), w_hh = torch::randn({8, 2});
  expect_error([&] { Stepper("lstmx", w_ih, w_hh); }, "mode");
  expect_error([&] { Stepper("lstm", w_ih, w_hh, c10::nullopt, c10::nullopt, 0); }, "batch");
  expect_error([&] { Stepper("lstm", torch::randn({8}), w_hh); }, "weight_ih");
  expect_error([&] { Stepper("lstm", torch::randn({6, 3}), w_hh); }, "weight_ih");
  expect_error([&] { Stepper("lstm", w_ih, torch::randn({8, 3})); }, "weight_hh");
  expect_error([&] { Stepper("gru", w_ih, w_hh); }, "weight_hh");
  expect_error([&] { Stepper("lstm", w_ih, w_hh.to(at::kDouble)); }, "weight_hh");
  expect_error([&] { Stepper("lstm", w_ih, w_hh, torch::randn({7}), c10::nullopt); }, "bias_ih");
  expect_error([&] { Stepper("lstm", w_ih, w_hh, c10::nullopt, torch::randn({8}).to(at::kDouble)); }, "bias_hh");
  expect_error([&] { Stepper("lstm", w_ih.to(at::kInt), w_hh.to(at::kInt)); }, "input");
  Stepper s("lstm", w_ih, w_hh, c10::nullopt, c10::nullopt, 2);
  expect_error([&] { s.step(Tensor()); }, "x");
  expect_error([&] { s.step(torch::randn({3})); }, "x: expected size (batch, input_size) = (2, 3)");
  expect_error([&] { s.step(torch::randn({1, 3})); }, "x: expected size");
  expect_error([&] { s.step(torch::randn({2, 4})); }, "x: expected size");
  expect_error([&] { s.step(torch::randn({2, 3}, at::kDouble)); }, "x");
  expect_error([&] { s.step(torch::randn({3, 2}).t()); }, "x: expected a contiguous tensor");
  expect_error([&] { s.set_state(torch::randn({2, 3})); }, "h");
  expect_error([&] { s.set_state(torch::randn({2, 2})); }, "c");
  expect_error([&] { s.set_state(torch::randn({2, 2}), torch::randn({1, 2})); }, "c");
  Stepper r("rnn_tanh", torch::randn({2, 3}), torch::randn({2, 2}));
  expect_error([&] { r.set_state(torch::randn({1, 2}), torch::randn({1, 2})); }, "only an LSTM");
}

}  // namespace
