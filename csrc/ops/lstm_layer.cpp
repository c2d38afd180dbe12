// Schemas of the lstm_layer op family and its C++ API.
#include "ops/lstm_layer.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace torch_rnn_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& input, const c10::optional<at::Tensor>& hx, const c10::optional<at::Tensor>& cx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const c10::optional<at::Tensor>& bias_ih,
    const c10::optional<at::Tensor>& bias_hh, const c10::optional<at::Tensor>& batch_sizes, bool reverse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torch_rnn_ext::lstm_layer", "")
                       .typed<decltype(lstm_layer)>();
  return op.call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse);
}

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  m.def(
      "lstm_layer(Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih=None, Tensor? bias_hh=None, Tensor? batch_sizes=None, bool reverse=False) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  // Forward that also returns what backward needs (gates and cell states, (N, 5H)).
  m.def(
      "_lstm_layer_forward(Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? batch_sizes, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "_lstm_layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, "
      "Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, "
      "Tensor output, Tensor workspace, Tensor? batch_sizes, bool reverse, bool[7] output_mask) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh)");
}

}  // namespace torch_rnn_ext
