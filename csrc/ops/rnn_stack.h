#pragma once
// C++ API of the multi-layer, optionally bidirectional recurrent stacks (at::lstm / at::gru signatures).
//
// input (T, B, I) ((B, T, I) when batch_first), unbatched (T, I) (states then (num_layers * D, H) and
// outputs without the batch dimension, as torch.nn's modules take them), or packed rows (N, I) with
// batch_sizes.
// params: per layer, per direction: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr] (torch.nn's
// _flat_weights order); an LSTM has a projection when the count says so (as at::lstm infers it).
// Initial states (num_layers * D, B, P) and (num_layers * D, B, H); zeros when absent.
// Returns output (T, B, D*P), h_n (num_layers * D, B, P) and, for LSTM, c_n (num_layers * D, B, H).
#include <ATen/ATen.h>

#include "compat.h"

#include <tuple>

namespace torch_rnn_ext {

// hx: {} for zeros, or {h0, c0}.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm(const at::Tensor& input, at::TensorList hx,
                                                    at::TensorList params, bool has_biases, int64_t num_layers,
                                                    double dropout, bool train, bool bidirectional,
                                                    bool batch_first,
                                                    const optional<at::Tensor>& batch_sizes = nullopt);

#define TRE_SINGLE_STATE_STACK_API(NAME)                                                                    \
  std::tuple<at::Tensor, at::Tensor> NAME(const at::Tensor& input, const optional<at::Tensor>& hx,   \
                                          at::TensorList params, bool has_biases, int64_t num_layers,        \
                                          double dropout, bool train, bool bidirectional, bool batch_first, \
                                          const optional<at::Tensor>& batch_sizes = nullopt);
TRE_SINGLE_STATE_STACK_API(gru)
TRE_SINGLE_STATE_STACK_API(rnn_tanh)
TRE_SINGLE_STATE_STACK_API(rnn_relu)
#undef TRE_SINGLE_STATE_STACK_API

// One step of a cell (torch.nn.LSTMCell / GRUCell / RNNCell): input (B, I), states (B, H).
std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& input, const optional<at::Tensor>& hx,
                                             const optional<at::Tensor>& cx, const at::Tensor& weight_ih,
                                             const at::Tensor& weight_hh,
                                             const optional<at::Tensor>& bias_ih = nullopt,
                                             const optional<at::Tensor>& bias_hh = nullopt);
#define TRE_SINGLE_STATE_CELL_API(NAME)                                                                 \
  at::Tensor NAME(const at::Tensor& input, const optional<at::Tensor>& hx, const at::Tensor& weight_ih, \
                  const at::Tensor& weight_hh, const optional<at::Tensor>& bias_ih = nullopt,      \
                  const optional<at::Tensor>& bias_hh = nullopt);
TRE_SINGLE_STATE_CELL_API(gru_cell)
TRE_SINGLE_STATE_CELL_API(rnn_tanh_cell)
TRE_SINGLE_STATE_CELL_API(rnn_relu_cell)
#undef TRE_SINGLE_STATE_CELL_API

}  // namespace torch_rnn_ext
