#pragma once
// C++ API of the multi-layer, optionally bidirectional recurrent stacks (at::lstm's signature).
#include <ATen/ATen.h>

#include <tuple>

namespace torch_rnn_ext {

// input (T, B, I) ((B, T, I) when batch_first), or packed rows (N, I) with batch_sizes.
// hx: {} for zeros, or {h0, c0} each (num_layers * num_directions, B, H).
// params: per layer, per direction: weight_ih, weight_hh[, bias_ih, bias_hh] (torch.nn's _flat_weights).
// Returns output (T, B, D*H), h_n and c_n (num_layers * D, B, H).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm(const at::Tensor& input, at::TensorList hx,
                                                    at::TensorList params, bool has_biases, int64_t num_layers,
                                                    double dropout, bool train, bool bidirectional,
                                                    bool batch_first,
                                                    const c10::optional<at::Tensor>& batch_sizes = c10::nullopt);

}  // namespace torch_rnn_ext
