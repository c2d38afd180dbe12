// Autograd of lstm_layer: a C++ autograd Function whose forward runs the saving forward op below
// autograd and whose backward calls the _lstm_layer_backward op. Registered under the Autograd key, so
// the gradient exists in Python, TorchScript and C++ alike.
#include <torch/library.h>

#include "checks.h"
#include "ops/autograd/common.h"

namespace torch_rnn_ext {
namespace autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& forward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torch_rnn_ext::_lstm_layer_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
                           const Tensor&, const Tensor&, const c10::optional<Tensor>&,
                           const c10::optional<Tensor>&, const c10::optional<Tensor>&, bool)>();
  return op;
}

const auto& backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torch_rnn_ext::_lstm_layer_backward", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
              const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
              const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, const Tensor&,
              const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, const Tensor&,
              const Tensor&, const c10::optional<Tensor>&, bool, std::array<bool, 7>)>();
  return op;
}

const auto& inference_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torch_rnn_ext::lstm_layer", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(
                           const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
                           const Tensor&, const Tensor&, const c10::optional<Tensor>&,
                           const c10::optional<Tensor>&, const c10::optional<Tensor>&, bool)>();
  return op;
}

class LSTMLayerFunction : public torch::autograd::Function<LSTMLayerFunction> {
 public:
  // Absent tensors are passed as nullopt, so they are not graph inputs; the saved presence flags map
  // each argument slot (0 input, 1 hx, 2 cx, 3 weight_ih, 4 weight_hh, 5 bias_ih, 6 bias_hh) to its edge.
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const c10::optional<Tensor>& hx,
                               const c10::optional<Tensor>& cx, const Tensor& weight_ih,
                               const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
                               const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& batch_sizes,
                               bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, workspace] =
        forward_op().call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse);
    ctx->save_for_backward({input, hx.value_or(Tensor()), cx.value_or(Tensor()), weight_ih, weight_hh,
                            bias_ih.value_or(Tensor()), bias_hh.value_or(Tensor()),
                            batch_sizes.value_or(Tensor()), output, workspace});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["present"] = c10::List<bool>(
        {true, present(hx), present(cx), true, true, present(bias_ih), present(bias_hh)});
    return {output, h_n, c_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const auto mask = input_grad_mask<7>(ctx, ctx->saved_data["present"].toBoolList());
    auto [gi, ghx, gcx, gwih, gwhh, gbih, gbhh] =
        backward_op().call(opt(grads[0]), opt(grads[1]), opt(grads[2]), s[0], opt(s[1]), opt(s[2]), s[3],
                           s[4], opt(s[5]), opt(s[6]), s[8], s[9], opt(s[7]), reverse, mask);
    return {gi, ghx, gcx, gwih, gwhh, gbih, gbhh, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> lstm_layer_autograd(
    const Tensor& input, const c10::optional<Tensor>& hx, const c10::optional<Tensor>& cx,
    const Tensor& weight_ih, const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
    const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& batch_sizes, bool reverse) {
  const Tensor h = hx.value_or(Tensor()), c = cx.value_or(Tensor()), bi = bias_ih.value_or(Tensor()),
               bh = bias_hh.value_or(Tensor());
  if (!needs_graph({input, h, c, weight_ih, weight_hh, bi, bh})) {
    at::AutoDispatchBelowADInplaceOrView guard;  // inference: nothing saved
    return inference_op().call(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse);
  }
  auto r = LSTMLayerFunction::apply(input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward_autograd(
    const c10::optional<Tensor>& grad_output, const c10::optional<Tensor>& grad_h_n,
    const c10::optional<Tensor>& grad_c_n, const Tensor& input, const c10::optional<Tensor>& hx,
    const c10::optional<Tensor>& cx, const Tensor& weight_ih, const Tensor& weight_hh,
    const c10::optional<Tensor>& bias_ih, const c10::optional<Tensor>& bias_hh, const Tensor& output,
    const Tensor& workspace, const c10::optional<Tensor>& batch_sizes, bool reverse,
    std::array<bool, 7> output_mask) {
  reject_double_backward("lstm_layer",
                         {grad_output.value_or(Tensor()), grad_h_n.value_or(Tensor()),
                          grad_c_n.value_or(Tensor()), input, hx.value_or(Tensor()), cx.value_or(Tensor()),
                          weight_ih, weight_hh, bias_hh.value_or(Tensor())});
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_output, grad_h_n, grad_c_n, input, hx, cx, weight_ih, weight_hh, bias_ih,
                            bias_hh, output, workspace, batch_sizes, reverse, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Autograd, m) {
  m.impl("lstm_layer", TORCH_FN(lstm_layer_autograd));
  m.impl("_lstm_layer_backward", TORCH_FN(lstm_layer_backward_autograd));
}

}  // namespace autograd
}  // namespace torch_rnn_ext
