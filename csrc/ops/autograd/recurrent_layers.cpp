// Autograd of the recurrent layer ops: one C++ autograd Function for every cell. Its forward runs
// _recurrent_layer_forward below autograd (saving the workspace); its backward calls
// _recurrent_layer_backward. Registered under the Autograd key, so the gradient exists in Python,
// TorchScript and C++ alike.
#include <torch/library.h>

#include "ops/dispatch.h"

#include <string>

#include "checks.h"
#include "ops/autograd/common.h"

namespace torch_rnn_ext {
namespace autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    string_view, const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&,
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&,
    const optional<Tensor>&, bool, bool);
using BackwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    string_view, const optional<Tensor>&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&,
    const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&, const optional<Tensor>&,
    const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&, const optional<Tensor>&, bool,
    std::array<bool, 8>);

const auto& forward_op() {
  static auto op = find_op<ForwardFn>("torch_rnn_ext::_recurrent_layer_forward");
  return op;
}

const auto& backward_op() {
  static auto op = find_op<BackwardFn>("torch_rnn_ext::_recurrent_layer_backward");
  return op;
}

class RecurrentLayerFunction : public torch::autograd::Function<RecurrentLayerFunction> {
 public:
  // Absent tensors are passed as nullopt, so they are not graph inputs; the saved presence flags map
  // each argument slot (0 input, 1 hx, 2 cx, 3 weight_ih, 4 weight_hh, 5 bias_ih, 6 bias_hh, 7 weight_hr)
  // to its edge. Outputs: (output, h_n, c_n) for LSTM, (output, h_n) for the others.
  static variable_list forward(AutogradContext* ctx, const std::string& mode, const Tensor& input,
                               const optional<Tensor>& hx, const optional<Tensor>& cx, const Tensor& weight_ih,
                               const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                               const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr,
                               const optional<Tensor>& batch_sizes, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, workspace] = forward_op().call(mode, input, hx, cx, weight_ih, weight_hh, bias_ih,
                                                           bias_hh, weight_hr, batch_sizes, reverse, true);
    ctx->save_for_backward({input, value(hx), value(cx), weight_ih, weight_hh, value(bias_ih), value(bias_hh),
                            value(weight_hr), value(batch_sizes), output, workspace});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["present"] = c10::List<bool>({true, present(hx), present(cx), true, true, present(bias_ih),
                                                  present(bias_hh), present(weight_hr)});
    if (mode == "lstm") return {output, h_n, c_n};
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const auto mask = input_grad_mask<8>(ctx, ctx->saved_data["present"].toBoolList());
    const Tensor grad_c = grads.size() > 2 ? grads[2] : Tensor();
    auto [gi, ghx, gcx, gwih, gwhh, gbih, gbhh, gwhr] = backward_op().call(
        mode, opt(grads[0]), opt(grads[1]), opt(grad_c), s[0], opt(s[1]), opt(s[2]), s[3], s[4], opt(s[5]),
        opt(s[6]), opt(s[7]), s[9], s[10], opt(s[8]), ctx->saved_data["reverse"].toBool(), mask);
    // One slot per forward argument: mode, the 9 tensors, reverse.
    return {Tensor(), gi, ghx, gcx, gwih, gwhh, gbih, gbhh, gwhr, Tensor(), Tensor()};
  }
};

// Runs one layer: through the Function when a graph is needed, else without saving anything.
variable_list run_layer(const std::string& mode, const Tensor& input, const optional<Tensor>& hx,
                        const optional<Tensor>& cx, const Tensor& weight_ih, const Tensor& weight_hh,
                        const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
                        const optional<Tensor>& weight_hr, const optional<Tensor>& batch_sizes, bool reverse) {
  // before the autograd Function, which reads every input's device
  check_defined(input, "input");
  check_defined(weight_ih, "weight_ih");
  check_defined(weight_hh, "weight_hh");
  if (needs_graph({input, value(hx), value(cx), weight_ih, weight_hh, value(bias_ih), value(bias_hh),
                   value(weight_hr)})) {
    return RecurrentLayerFunction::apply(mode, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                         batch_sizes, reverse);
  }
  at::AutoDispatchBelowADInplaceOrView guard;  // inference: nothing saved
  auto r = forward_op().call(mode, input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes,
                             reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor> lstm_layer_autograd(const Tensor& input, const optional<Tensor>& hx,
                                                       const optional<Tensor>& cx, const Tensor& weight_ih,
                                                       const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                                       const optional<Tensor>& bias_hh,
                                                       const optional<Tensor>& batch_sizes, bool reverse,
                                                       const optional<Tensor>& weight_hr) {
  auto r = run_layer("lstm", input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse);
  return {r[0], r[1], r[2]};
}

template <const char* kMode>
std::tuple<Tensor, Tensor> single_state_layer_autograd(const Tensor& input, const optional<Tensor>& hx,
                                                       const Tensor& weight_ih, const Tensor& weight_hh,
                                                       const optional<Tensor>& bias_ih,
                                                       const optional<Tensor>& bias_hh,
                                                       const optional<Tensor>& batch_sizes, bool reverse) {
  auto r = run_layer(kMode, input, hx, nullopt, weight_ih, weight_hh, bias_ih, bias_hh, nullopt,
                     batch_sizes, reverse);
  return {r[0], r[1]};
}

constexpr char kGru[] = "gru";
constexpr char kRnnTanh[] = "rnn_tanh";
constexpr char kRnnRelu[] = "rnn_relu";

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> recurrent_layer_backward_autograd(
    string_view mode, const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n,
    const optional<Tensor>& grad_c_n, const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx,
    const Tensor& weight_ih, const Tensor& weight_hh, const optional<Tensor>& bias_ih,
    const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr, const Tensor& output,
    const Tensor& workspace, const optional<Tensor>& batch_sizes, bool reverse, std::array<bool, 8> output_mask) {
  reject_double_backward(std::string(mode.data(), mode.size()).c_str(),
                         {value(grad_output), value(grad_h_n), value(grad_c_n), input, value(hx), value(cx),
                          weight_ih, weight_hh, value(bias_hh), value(weight_hr)});
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(mode, grad_output, grad_h_n, grad_c_n, input, hx, cx, weight_ih, weight_hh, bias_ih,
                            bias_hh, weight_hr, output, workspace, batch_sizes, reverse, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Autograd, m) {
  m.impl("lstm_layer", TORCH_FN(lstm_layer_autograd));
  m.impl("gru_layer", TORCH_FN(single_state_layer_autograd<kGru>));
  m.impl("rnn_tanh_layer", TORCH_FN(single_state_layer_autograd<kRnnTanh>));
  m.impl("rnn_relu_layer", TORCH_FN(single_state_layer_autograd<kRnnRelu>));
  m.impl("_recurrent_layer_backward", TORCH_FN(recurrent_layer_backward_autograd));
}

}  // namespace autograd
}  // namespace torch_rnn_ext
