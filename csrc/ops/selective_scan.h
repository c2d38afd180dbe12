#pragma once
// C++ API of the selective_scan op (Mamba's S6 scan; calls through the dispatcher, so autograd applies).
#include <ATen/ATen.h>

#include "compat.h"

#include <tuple>

namespace torch_rnn_ext {

// The selective scan of mamba_ssm's selective_scan_fn, with its argument names and shapes:
//   u, delta       (batch, dim, L)
//   A              (dim, N)
//   B, C           (dim, N) constant, (batch, N, L) varying, or (batch, G, N, L) grouped: channel d uses
//                  group d / (dim / G)
//   D, delta_bias  (dim) optional;  z (batch, dim, L) optional;  initial_state (batch, dim, N) optional
//   delta' = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
//   h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t,   y_t = sum_n C_t h_t + D u_t,   out = y silu(z)
// Returns out (batch, dim, L) and last_state (batch, dim, N). float32 or float64, computed in that dtype.
std::tuple<at::Tensor, at::Tensor> selective_scan(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const optional<at::Tensor>& D = nullopt,
    const optional<at::Tensor>& z = nullopt,
    const optional<at::Tensor>& delta_bias = nullopt, bool delta_softplus = false,
    const optional<at::Tensor>& initial_state = nullopt);

}  // namespace torch_rnn_ext
