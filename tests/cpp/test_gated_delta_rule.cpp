// gated_delta_rule through its C++ API against a step-by-step LibTorch reference of the recurrence, its
// backward against autograd of that reference, carried state, and bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/gated_delta_rule.h"
#include "test_util.h"

namespace {

using at::Tensor;

const auto kF64 = at::TensorOptions().dtype(at::kDouble);

// Per value head: S = exp(g_t) S; S += k_t (beta_t (v_t - S^T k_t))^T; o_t = S^T (scale q_t). q/k head h
// serves value heads h * G ... (h + 1) * G - 1.
std::tuple<Tensor, Tensor> reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                     const Tensor& beta, double scale, const Tensor& s0) {
  const int64_t T = q.size(1), G = v.size(2) / q.size(2);
  Tensor S = s0;  // (B, HV, K, V)
  std::vector<Tensor> os;
  for (int64_t t = 0; t < T; ++t) {
    Tensor kt = k.select(1, t).repeat_interleave(G, 1), qt = q.select(1, t).repeat_interleave(G, 1);  // (B, HV, K)
    S = S * g.select(1, t).exp().unsqueeze(-1).unsqueeze(-1);
    Tensor p = (S * kt.unsqueeze(-1)).sum(2);                              // (B, HV, V)
    Tensor u = beta.select(1, t).unsqueeze(-1) * (v.select(1, t) - p);
    S = S + kt.unsqueeze(-1) * u.unsqueeze(2);
    os.push_back((S * (scale * qt).unsqueeze(-1)).sum(2));
  }
  return {torch::stack(os, 1), S};
}

TEST(GatedDeltaRule, ForwardAndBackwardMatchReference) {
  torch::manual_seed(0);
  const int64_t B = 2, T = 70, H = 1, HV = 2, K = 5, V = 20;  // crosses a saved state and a panel of 16
  std::vector<Tensor> xs{torch::randn({B, T, H, K}, kF64), torch::nn::functional::normalize(
                             torch::randn({B, T, H, K}, kF64), torch::nn::functional::NormalizeFuncOptions().dim(-1)),
                         torch::randn({B, T, HV, V}, kF64), -torch::rand({B, T, HV}, kF64),
                         torch::rand({B, T, HV}, kF64), torch::randn({B, HV, K, V}, kF64)};
  for (auto& x : xs) x.requires_grad_(true);
  auto [o, s] = torch_rnn_ext::gated_delta_rule(xs[0], xs[1], xs[2], xs[3], xs[4], 0.4, xs[5]);
  auto [ro, rs] = reference(xs[0], xs[1], xs[2], xs[3], xs[4], 0.4, xs[5]);
  EXPECT_TRUE(torch::allclose(o, ro, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(s, rs, 1e-12, 1e-12));
  Tensor wo = torch::randn_like(o), ws = torch::randn_like(s);
  auto g = torch::autograd::grad({(o * wo).sum() + (s * ws).sum()}, xs);
  auto rg = torch::autograd::grad({(ro * wo).sum() + (rs * ws).sum()}, xs);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(torch::allclose(g[i], rg[i], 1e-10, 1e-10)) << "gradient " << i;
  // Two calls with the carried state equal one, to rounding: a scalar decay is kept out of the state as a
  // running factor, multiplied in at the end of each call (bit for bit with per-key decays or none).
  auto part = [&](int64_t a, int64_t b, const Tensor& state) {
    return torch_rnn_ext::gated_delta_rule(xs[0].slice(1, a, b), xs[1].slice(1, a, b), xs[2].slice(1, a, b),
                                           xs[3].slice(1, a, b), xs[4].slice(1, a, b), 0.4, state);
  };
  auto [o1, s1] = part(0, 33, xs[5]);
  auto [o2, s2] = part(33, T, s1);
  EXPECT_TRUE(torch::allclose(torch::cat({o1, o2}, 1), o, 1e-13, 1e-13));
  EXPECT_TRUE(torch::allclose(s2, s, 1e-13, 1e-13));
}

using torch_rnn_ext_test::expect_error;

TEST(GatedDeltaRule, BadInputsRaise) {
  Tensor q = torch::randn({1, 4, 2, 3}), v = torch::randn({1, 4, 4, 5}), g = -torch::rand({1, 4, 4}),
         beta = torch::rand({1, 4, 4});
  expect_error([&] { torch_rnn_ext::gated_delta_rule(q[0], q, v, g, beta); }, "q: expected a 4-D tensor");
  expect_error([&] { torch_rnn_ext::gated_delta_rule(q, q, torch::randn({1, 4, 3, 5}), g, beta); },
               "does not divide the number of value heads HV = 3");
  expect_error([&] { torch_rnn_ext::gated_delta_rule(q, q, v, g, torch::rand({1, 4, 2})); },
               "beta: expected size [1, 4, 4]");
  expect_error([&] { torch_rnn_ext::gated_delta_rule(q, q, v, g.to(at::kDouble), beta); }, "g: expected dtype");
  expect_error(
      [&] { torch_rnn_ext::gated_delta_rule(q, q, v, g, beta, {}, {}, false, torch::tensor({0, 3, 2}, at::kLong)); },
      "cu_seqlens: expected strictly increasing offsets");
  expect_error([&] { torch_rnn_ext::gated_delta_rule(q, q, v, g, beta, {}, torch::randn({1, 4, 3, 4})); },
               "initial_state: expected size [1, 4, 3, 5]");
}

}  // namespace
