#pragma once
// The kernels of the recurrent layer ops for one backend (CPU, Meta), from its per-cell implementation:
// the public layer ops and the private forward and backward name their cell differently (by op, by
// `mode`), but each backend computes every op with one forward and one backward per cell.
//
// Impl<K> provides, for cell K:
//   static std::tuple<Tensor, Tensor, Tensor, Tensor> forward(op, input, hx, cx, weight_ih, weight_hh,
//       bias_ih, bias_hh, weight_hr, batch_sizes, reverse, save)  -> (output, h_n, c_n, workspace)
//   static std::tuple<Tensor x 8> backward(op, grad_output, grad_h_n, grad_c_n, input, hx, cx, weight_ih,
//       weight_hh, bias_ih, bias_hh, weight_hr, output, workspace, batch_sizes, reverse, output_mask)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "compat.h"
#include "ops/layer_shapes.h"  // with_cell

namespace torch_rnn_ext {

template <template <kernels::CellKind> class Impl>
struct LayerKernels {
  using Tensor = at::Tensor;
  using OptT = optional<Tensor>;
  using CellKind = kernels::CellKind;

  static std::tuple<Tensor, Tensor, Tensor, Tensor> recurrent_layer_forward(
      string_view mode, const Tensor& input, const OptT& hx, const OptT& cx, const Tensor& weight_ih,
      const Tensor& weight_hh, const OptT& bias_ih, const OptT& bias_hh, const OptT& weight_hr,
      const OptT& batch_sizes, bool reverse, bool save) {
    const std::string m(mode.data(), mode.size());
    return with_cell(m, [&](auto kind) {
      return Impl<decltype(kind)::value>::forward(m.c_str(), input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                                  weight_hr, batch_sizes, reverse, save);
    });
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrent_layer_backward(
      string_view mode, const OptT& grad_output, const OptT& grad_h_n, const OptT& grad_c_n, const Tensor& input,
      const OptT& hx, const OptT& cx, const Tensor& weight_ih, const Tensor& weight_hh, const OptT& bias_ih,
      const OptT& bias_hh, const OptT& weight_hr, const Tensor& output, const Tensor& workspace,
      const OptT& batch_sizes, bool reverse, std::array<bool, 8> output_mask) {
    const std::string m(mode.data(), mode.size());
    return with_cell(m, [&](auto kind) {
      return Impl<decltype(kind)::value>::backward(
          m.c_str(), grad_output.value_or(Tensor()), grad_h_n.value_or(Tensor()), grad_c_n.value_or(Tensor()),
          input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, output, workspace, batch_sizes, reverse,
          output_mask);
    });
  }

  static std::tuple<Tensor, Tensor, Tensor> lstm_layer(const Tensor& input, const OptT& hx, const OptT& cx,
                                                       const Tensor& weight_ih, const Tensor& weight_hh,
                                                       const OptT& bias_ih, const OptT& bias_hh,
                                                       const OptT& batch_sizes, bool reverse, const OptT& weight_hr) {
    auto r = Impl<CellKind::LSTM>::forward("lstm_layer", input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh,
                                           weight_hr, batch_sizes, reverse, /*save=*/false);
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  }

  template <CellKind K>
  static std::tuple<Tensor, Tensor> single_state_layer(const Tensor& input, const OptT& hx, const Tensor& weight_ih,
                                                       const Tensor& weight_hh, const OptT& bias_ih,
                                                       const OptT& bias_hh, const OptT& batch_sizes, bool reverse) {
    const char* op = K == CellKind::GRU ? "gru_layer" : K == CellKind::RNN_TANH ? "rnn_tanh_layer" : "rnn_relu_layer";
    auto r = Impl<K>::forward(op, input, hx, nullopt, weight_ih, weight_hh, bias_ih, bias_hh, nullopt, batch_sizes,
                              reverse, /*save=*/false);
    return {std::get<0>(r), std::get<1>(r)};
  }

  // Registers every layer op but _layer_products (which has no cell).
  static void register_all(torch::Library& m) {
    m.impl("lstm_layer", TORCH_FN(lstm_layer));
    m.impl("gru_layer", TORCH_FN(single_state_layer<CellKind::GRU>));
    m.impl("rnn_tanh_layer", TORCH_FN(single_state_layer<CellKind::RNN_TANH>));
    m.impl("rnn_relu_layer", TORCH_FN(single_state_layer<CellKind::RNN_RELU>));
    m.impl("_recurrent_layer_forward", TORCH_FN(recurrent_layer_forward));
    m.impl("_recurrent_layer_backward", TORCH_FN(recurrent_layer_backward));
  }
};

}  // namespace torch_rnn_ext
