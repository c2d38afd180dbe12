#pragma once
// C++ API of the lstm_layer op (calls through the dispatcher, so autograd and tracing apply).
#include <ATen/ATen.h>

#include <tuple>

namespace torch_rnn_ext {

// One LSTM layer in one direction, torch.nn.LSTM's gate order (i, f, g, o) and formulas.
//   input        (T, B, I), or (N, I) packed rows when batch_sizes (T,) is given
//   hx, cx       (B, H) initial states, zeros when absent
//   weight_ih    (4H, I), weight_hh (4H, H), bias_ih / bias_hh (4H) optional
//   reverse      walk time backwards (the reverse direction of a bidirectional layer)
// Returns output (T, B, H) (or (N, H) packed), h_n (B, H), c_n (B, H).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& input, const c10::optional<at::Tensor>& hx, const c10::optional<at::Tensor>& cx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const c10::optional<at::Tensor>& bias_ih,
    const c10::optional<at::Tensor>& bias_hh, const c10::optional<at::Tensor>& batch_sizes = c10::nullopt,
    bool reverse = false);

}  // namespace torch_rnn_ext
