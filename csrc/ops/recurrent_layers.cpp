// Schemas of the single-layer recurrent ops and their C++ API.
//
// The four public ops (lstm_layer, gru_layer, rnn_tanh_layer, rnn_relu_layer) share one private forward
// that also returns what backward needs, and one private backward, both taking the cell as `mode`
// ("lstm", "gru", "rnn_tanh", "rnn_relu"): the cells differ in their gate math only.
#include "ops/recurrent_layers.h"

#include <torch/library.h>

#include "ops/dispatch.h"

namespace torch_rnn_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(const at::Tensor& input, const OptTensor& hx,
                                                          const OptTensor& cx, const at::Tensor& weight_ih,
                                                          const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                                          const OptTensor& bias_hh, const OptTensor& batch_sizes,
                                                          bool reverse, const OptTensor& weight_hr) {
  static auto op = find_op<decltype(lstm_layer)>("torch_rnn_ext::lstm_layer");
  return op.call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse, weight_hr);
}

#define TRE_SINGLE_STATE_LAYER_API(NAME)                                                                    \
  std::tuple<at::Tensor, at::Tensor> NAME(const at::Tensor& input, const OptTensor& hx,                    \
                                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,         \
                                          const OptTensor& bias_ih, const OptTensor& bias_hh,               \
                                          const OptTensor& batch_sizes, bool reverse) {                     \
    static auto op = find_op<decltype(NAME)>("torch_rnn_ext::" #NAME);                                      \
    return op.call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse);               \
  }
TRE_SINGLE_STATE_LAYER_API(gru_layer)
TRE_SINGLE_STATE_LAYER_API(rnn_tanh_layer)
TRE_SINGLE_STATE_LAYER_API(rnn_relu_layer)
#undef TRE_SINGLE_STATE_LAYER_API

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  def_op(m, 
      "lstm_layer(Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih=None, Tensor? bias_hh=None, Tensor? batch_sizes=None, bool reverse=False, "
      "Tensor? weight_hr=None) -> (Tensor output, Tensor h_n, Tensor c_n)");
  for (const char* name : {"gru_layer", "rnn_tanh_layer", "rnn_relu_layer"}) {
    def_op(m, (std::string(name) +
           "(Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih=None, "
           "Tensor? bias_hh=None, Tensor? batch_sizes=None, bool reverse=False) -> (Tensor output, Tensor h_n)")
              .c_str());
  }
  // The forward of any cell; with `save` it also returns the workspace backward needs (else undefined).
  def_op(m, 
      "_recurrent_layer_forward(str mode, Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor? batch_sizes, "
      "bool reverse, bool save) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  def_op(m, 
      "_recurrent_layer_backward(str mode, Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? weight_hr, Tensor output, Tensor workspace, Tensor? batch_sizes, "
      "bool reverse, bool[8] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh, "
      "Tensor grad_weight_hr)");
  // A layer's matrix products alone (forward, and backward's too with `backward`), for the benchmark's
  // floor: see cpu/recurrent_layer.h.
  def_op(m, "_layer_products(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor(a!) states, bool backward) "
        "-> Tensor");
}

}  // namespace torch_rnn_ext
