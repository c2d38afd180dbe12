#pragma once
// C++ API of the single-layer recurrent ops (calls through the dispatcher, so autograd and tracing apply).
//
// One layer in one direction, with torch.nn's gate order and formulas:
//   input        (T, B, I), or (N, I) packed rows when batch_sizes (T,) int64 is given
//   hx           (B, P) initial hidden state (P = H, or proj_size for an LSTM with weight_hr); zeros if absent
//   cx           (B, H) initial cell state (LSTM); zeros if absent
//   weight_ih    (G*H, I), weight_hh (G*H, P), bias_ih / bias_hh (G*H) optional; G = 4 (LSTM), 3 (GRU), 1 (RNN)
//   weight_hr    (P, H) LSTM projection (proj_size), optional
//   reverse      walk time backwards (the reverse direction of a bidirectional layer)
// Returns output (T, B, P) (or (N, P) packed), h_n (B, P) and, for LSTM, c_n (B, H).
#include <ATen/ATen.h>

#include "compat.h"

#include <tuple>

namespace torch_rnn_ext {

using OptTensor = optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(const at::Tensor& input, const OptTensor& hx,
                                                          const OptTensor& cx, const at::Tensor& weight_ih,
                                                          const at::Tensor& weight_hh,
                                                          const OptTensor& bias_ih = nullopt,
                                                          const OptTensor& bias_hh = nullopt,
                                                          const OptTensor& batch_sizes = nullopt,
                                                          bool reverse = false,
                                                          const OptTensor& weight_hr = nullopt);

std::tuple<at::Tensor, at::Tensor> gru_layer(const at::Tensor& input, const OptTensor& hx,
                                             const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                             const OptTensor& bias_ih = nullopt,
                                             const OptTensor& bias_hh = nullopt,
                                             const OptTensor& batch_sizes = nullopt, bool reverse = false);

std::tuple<at::Tensor, at::Tensor> rnn_tanh_layer(const at::Tensor& input, const OptTensor& hx,
                                                  const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                                  const OptTensor& bias_ih = nullopt,
                                                  const OptTensor& bias_hh = nullopt,
                                                  const OptTensor& batch_sizes = nullopt,
                                                  bool reverse = false);

std::tuple<at::Tensor, at::Tensor> rnn_relu_layer(const at::Tensor& input, const OptTensor& hx,
                                                  const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                                  const OptTensor& bias_ih = nullopt,
                                                  const OptTensor& bias_hh = nullopt,
                                                  const OptTensor& batch_sizes = nullopt,
                                                  bool reverse = false);

}  // namespace torch_rnn_ext
