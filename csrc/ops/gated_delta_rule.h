#pragma once
// C++ API of the gated_delta_rule op (Gated DeltaNet's recurrence; calls through the dispatcher, so
// autograd applies).
#include <ATen/ATen.h>

#include "compat.h"

#include <tuple>

namespace torch_rnn_ext {

// Per value head, step t (S is (K, V), key-first):
//   S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t)
//   q, k           (batch, T, H, K); q/k head h serves value heads h HV/H ... (h + 1) HV/H - 1
//   v              (batch, T, HV, V)
//   g              (batch, T, HV) log decay, or (batch, T, HV, K) per key channel, or absent (no decay)
//   beta           (batch, T, HV)
//   scale          absent: K^-1/2
//   initial_state  (N, HV, K, V), absent: zeros; N = batch, or the number of sequences of cu_seqlens
//   use_qk_l2norm  q and k L2-normalised over K (eps 1e-6) inside the op
//   cu_seqlens     (N + 1) int64 offsets of N sequences packed along T of a batch of one
// Returns o (batch, T, HV, V) and the state after each sequence's last step (N, HV, K, V). float32
// (the state in float32) or float64.
std::tuple<at::Tensor, at::Tensor> gated_delta_rule(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const optional<at::Tensor>& g, const at::Tensor& beta,
                                                    optional<double> scale = nullopt,
                                                    const optional<at::Tensor>& initial_state = nullopt,
                                                    bool use_qk_l2norm_in_kernel = false,
                                                    const optional<at::Tensor>& cu_seqlens = nullopt);

}  // namespace torch_rnn_ext
