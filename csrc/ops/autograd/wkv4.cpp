// Autograd of wkv4: a C++ autograd Function whose forward runs the saving forward op below autograd and
// whose backward calls the _wkv4_backward op. Registered under the Autograd key, so the gradient exists
// in Python, TorchScript and C++ alike.
#include <torch/library.h>

#include "ops/dispatch.h"

#include "checks.h"
#include "ops/autograd/common.h"

namespace torch_rnn_ext {
namespace autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& inference_op() {
  using Signature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                               const optional<Tensor>&);
  static auto op = find_op<Signature>("torch_rnn_ext::wkv4");
  return op;
}

const auto& forward_op() {
  using Signature = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const optional<Tensor>&);
  static auto op = find_op<Signature>("torch_rnn_ext::_wkv4_forward");
  return op;
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

const auto& backward_op() {
  using Signature = Grads(const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
                          const Tensor&, const Tensor&, const optional<Tensor>&, const Tensor&,
                          std::array<bool, 5>);
  static auto op = find_op<Signature>("torch_rnn_ext::_wkv4_backward");
  return op;
}

class WKV4Function : public torch::autograd::Function<WKV4Function> {
 public:
  // An absent state is passed as nullopt, so it is not a graph input; the saved presence flags map each
  // argument slot (0 time_decay, 1 time_first, 2 k, 3 v, 4 state) to its edge.
  static variable_list forward(AutogradContext* ctx, const Tensor& time_decay, const Tensor& time_first,
                               const Tensor& k, const Tensor& v, const optional<Tensor>& state) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, new_state, checkpoints] = forward_op().call(time_decay, time_first, k, v, state);
    ctx->save_for_backward({time_decay, time_first, k, v, value(state), checkpoints});
    ctx->saved_data["present"] = c10::List<bool>({true, true, true, true, present(state)});
    return {y, new_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto mask = input_grad_mask<5>(ctx, ctx->saved_data["present"].toBoolList());
    auto [gdecay, gfirst, gk, gv, gstate] =
        backward_op().call(opt(grads[0]), opt(grads[1]), s[0], s[1], s[2], s[3], opt(s[4]), s[5], mask);
    return {gdecay, gfirst, gk, gv, gstate};
  }
};

std::tuple<Tensor, Tensor> wkv4_autograd(const Tensor& time_decay, const Tensor& time_first, const Tensor& k,
                                         const Tensor& v, const optional<Tensor>& state) {
  // before the autograd Function, which reads every input's device
  check_defined(k, "k");
  check_defined(v, "v");
  check_defined(time_decay, "time_decay");
  check_defined(time_first, "time_first");
  if (!needs_graph({time_decay, time_first, k, v, value(state)})) {
    at::AutoDispatchBelowADInplaceOrView guard;  // inference: nothing saved
    return inference_op().call(time_decay, time_first, k, v, state);
  }
  auto r = WKV4Function::apply(time_decay, time_first, k, v, state);
  return {r[0], r[1]};
}

Grads wkv4_backward_autograd(const optional<Tensor>& grad_y, const optional<Tensor>& grad_new_state,
                             const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v,
                             const optional<Tensor>& state, const Tensor& checkpoints,
                             std::array<bool, 5> output_mask) {
  reject_double_backward("wkv4", {value(grad_y), value(grad_new_state), time_decay,
                                  time_first, k, v, value(state)});
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_y, grad_new_state, time_decay, time_first, k, v, state, checkpoints,
                            output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Autograd, m) {
  m.impl("wkv4", TORCH_FN(wkv4_autograd));
  m.impl("_wkv4_backward", TORCH_FN(wkv4_backward_autograd));
}

}  // namespace autograd
}  // namespace torch_rnn_ext
