#pragma once
// C++ API of the wkv4 op (RWKV-4's WKV recurrence; calls through the dispatcher, so autograd applies).
#include <ATen/ATen.h>

#include "compat.h"

#include <tuple>

namespace torch_rnn_ext {

// RWKV-4's time mixing average, with w = -exp(time_decay) and u = time_first:
//   y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})
//   time_decay, time_first  (C)
//   k, v                    (batch, T, C)
//   state                   (batch, 3, C) = (aa, bb, pp) carried from a previous call, or empty when absent
// Computed in the numerically stable form of RWKV-4's CUDA kernel (finite for any finite k).
// Returns y (batch, T, C) and the state after the last step (batch, 3, C). float32 or float64.
std::tuple<at::Tensor, at::Tensor> wkv4(const at::Tensor& time_decay, const at::Tensor& time_first,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const optional<at::Tensor>& state = nullopt);

}  // namespace torch_rnn_ext
