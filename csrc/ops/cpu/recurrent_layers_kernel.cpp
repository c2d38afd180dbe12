// CPU kernels of the recurrent layer ops: the shared layer template of recurrent_layer.h, per cell.
#include <torch/library.h>

#include "ops/cpu/recurrent_layer.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

using kernels::CellKind;

std::tuple<Tensor, Tensor, Tensor, Tensor> recurrent_layer_forward_cpu(
    string_view mode, const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx,
    const Tensor& weight_ih, const Tensor& weight_hh, const optional<Tensor>& bias_ih,
    const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr, const optional<Tensor>& batch_sizes,
    bool reverse, bool save) {
  const std::string m(mode.data(), mode.size());
  return with_cell(m, [&](auto kind) {
    return layer_forward<decltype(kind)::value>(m.c_str(), input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                                weight_hr, batch_sizes, reverse, save);
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrent_layer_backward_cpu(
    string_view mode, const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx,
    const Tensor& weight_ih, const Tensor& weight_hh, const optional<Tensor>& bias_ih,
    const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr, const Tensor& output,
    const Tensor& workspace, const optional<Tensor>& batch_sizes, bool reverse, std::array<bool, 8> output_mask) {
  const std::string m(mode.data(), mode.size());
  auto g = with_cell(m, [&](auto kind) {
    return layer_backward<decltype(kind)::value>(
        m.c_str(), grad_output.value_or(Tensor()), grad_h_n.value_or(Tensor()), grad_c_n.value_or(Tensor()), input,
        hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, output, workspace, batch_sizes, reverse,
        output_mask);
  });
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

std::tuple<Tensor, Tensor, Tensor> lstm_layer_cpu(const Tensor& input, const optional<Tensor>& hx,
                                                  const optional<Tensor>& cx, const Tensor& weight_ih,
                                                  const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                                  const optional<Tensor>& bias_hh,
                                                  const optional<Tensor>& batch_sizes, bool reverse,
                                                  const optional<Tensor>& weight_hr) {
  auto r = layer_forward<CellKind::LSTM>("lstm_layer", input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                         weight_hr, batch_sizes, reverse, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

template <CellKind K>
std::tuple<Tensor, Tensor> single_state_layer_cpu(const Tensor& input, const optional<Tensor>& hx,
                                                  const Tensor& weight_ih, const Tensor& weight_hh,
                                                  const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
                                                  const optional<Tensor>& batch_sizes, bool reverse) {
  const char* op = K == CellKind::GRU ? "gru_layer" : K == CellKind::RNN_TANH ? "rnn_tanh_layer" : "rnn_relu_layer";
  auto r = layer_forward<K>(op, input, hx, nullopt, weight_ih, weight_hh, bias_ih, bias_hh, nullopt,
                            batch_sizes, reverse, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r)};
}

void register_kernels(torch::Library& m) {
  m.impl("lstm_layer", TORCH_FN(lstm_layer_cpu));
  m.impl("gru_layer", TORCH_FN(single_state_layer_cpu<CellKind::GRU>));
  m.impl("rnn_tanh_layer", TORCH_FN(single_state_layer_cpu<CellKind::RNN_TANH>));
  m.impl("rnn_relu_layer", TORCH_FN(single_state_layer_cpu<CellKind::RNN_RELU>));
  m.impl("_recurrent_layer_forward", TORCH_FN(recurrent_layer_forward_cpu));
  m.impl("_recurrent_layer_backward", TORCH_FN(recurrent_layer_backward_cpu));
  m.impl("_layer_products", TORCH_FN(layer_products));
}

}  // namespace

// CPU only: Meta tensors (and torch.compile's fake tensors) go to ops/meta/recurrent_layers.cpp.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) { register_kernels(m); }

}  // namespace cpu
}  // namespace torch_rnn_ext
