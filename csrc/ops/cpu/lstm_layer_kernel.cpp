// CPU kernels of the lstm_layer ops: the shared layer template instantiated with the LSTM cell.
#include <torch/library.h>

#include "ops/cpu/recurrent_layer.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

constexpr auto Cell = kernels::CellKind::LSTM;

std::tuple<Tensor, Tensor, Tensor> lstm_layer_cpu(const Tensor& input, const optional<Tensor>& hx,
                                                  const optional<Tensor>& cx, const Tensor& weight_ih,
                                                  const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                                  const optional<Tensor>& bias_hh,
                                                  const optional<Tensor>& batch_sizes, bool reverse) {
  auto r = layer_forward<Cell>("lstm_layer", input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                               batch_sizes, reverse, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_layer_forward_cpu(
    const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx, const Tensor& weight_ih,
    const Tensor& weight_hh, const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
    const optional<Tensor>& batch_sizes, bool reverse) {
  return layer_forward<Cell>("lstm_layer", input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                             batch_sizes, reverse, /*save=*/true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_cpu(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const optional<Tensor>& grad_c_n,
    const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx, const Tensor& weight_ih,
    const Tensor& weight_hh, const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
    const Tensor& output, const Tensor& workspace, const optional<Tensor>& batch_sizes, bool reverse,
    std::array<bool, 7> output_mask) {
  auto g = layer_backward<Cell>("lstm_layer", grad_output.value_or(Tensor()), grad_h_n.value_or(Tensor()),
                                grad_c_n.value_or(Tensor()), input, hx, cx, weight_ih, weight_hh, bias_ih,
                                bias_hh, output, workspace, batch_sizes, reverse, output_mask);
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) {
  m.impl("lstm_layer", TORCH_FN(lstm_layer_cpu));
  m.impl("_lstm_layer_forward", TORCH_FN(lstm_layer_forward_cpu));
  m.impl("_lstm_layer_backward", TORCH_FN(lstm_layer_backward_cpu));
}

// Tensors on any other device reach the same functions, whose argument checks reject them by name
// ("input: expected a CPU tensor, got a tensor on cuda:0") instead of the dispatcher's generic error.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CompositeExplicitAutograd, m) {
  m.impl("lstm_layer", TORCH_FN(lstm_layer_cpu));
  m.impl("_lstm_layer_forward", TORCH_FN(lstm_layer_forward_cpu));
  m.impl("_lstm_layer_backward", TORCH_FN(lstm_layer_backward_cpu));
}

}  // namespace cpu
}  // namespace torch_rnn_ext
