// Autograd of gated_delta_rule: a C++ autograd Function whose forward runs the saving forward op below
// autograd and whose backward calls the _gated_delta_rule_backward op. Registered under the Autograd key,
// so the gradient exists in Python, TorchScript and C++ alike.
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

using Result = std::tuple<Tensor, Tensor>;
using Signature = Result(const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&, const Tensor&,
                         optional<double>, const optional<Tensor>&, bool, const optional<Tensor>&);

const auto& inference_op() {
  static auto op = find_op<Signature>("torch_rnn_ext::gated_delta_rule");
  return op;
}

const auto& forward_op() {
  using ForwardSignature = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                              const optional<Tensor>&, const Tensor&, optional<double>,
                                                              const optional<Tensor>&, bool, const optional<Tensor>&);
  static auto op = find_op<ForwardSignature>("torch_rnn_ext::_gated_delta_rule_forward");
  return op;
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

const auto& backward_op() {
  using BackwardSignature =
      Grads(const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
            const optional<Tensor>&, const Tensor&, optional<double>, const optional<Tensor>&, bool,
            const optional<Tensor>&, const Tensor&, std::array<bool, 6>);
  static auto op = find_op<BackwardSignature>("torch_rnn_ext::_gated_delta_rule_backward");
  return op;
}

class GatedDeltaRuleFunction : public torch::autograd::Function<GatedDeltaRuleFunction> {
 public:
  // Absent optionals are passed as nullopt, so they are not graph inputs; the saved presence flags map each
  // differentiable slot (0 q, 1 k, 2 v, 3 g, 4 beta, 5 initial_state) to its edge. cu_seqlens (integers)
  // comes last and gets no gradient.
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                               const optional<Tensor>& initial_state, bool l2norm,
                               const optional<Tensor>& cu_seqlens) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [o, final_state, checkpoints] =
        forward_op().call(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens);
    ctx->save_for_backward({q, k, v, value(g), beta, value(initial_state), value(cu_seqlens), checkpoints});
    ctx->saved_data["present"] = c10::List<bool>({true, true, true, present(g), true, present(initial_state)});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["l2norm"] = l2norm;
    return {o, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto mask = input_grad_mask<6>(ctx, ctx->saved_data["present"].toBoolList());
    const auto& scale_value = ctx->saved_data["scale"];
    const optional<double> scale = scale_value.isNone() ? optional<double>() : scale_value.toDouble();
    auto [gq, gk, gv, gg, gbeta, ginit] =
        backward_op().call(opt(grads[0]), opt(grads[1]), s[0], s[1], s[2], opt(s[3]), s[4], scale, opt(s[5]),
                           ctx->saved_data["l2norm"].toBool(), opt(s[6]), s[7], mask);
    return {gq, gk, gv, gg, gbeta, Tensor(), ginit, Tensor(), Tensor()};
  }
};

Result gated_delta_rule_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const optional<Tensor>& g,
                                 const Tensor& beta, optional<double> scale, const optional<Tensor>& initial_state,
                                 bool l2norm, const optional<Tensor>& cu_seqlens) {
  // before the autograd Function, which reads every input's device
  check_defined(q, "q");
  check_defined(k, "k");
  check_defined(v, "v");
  check_defined(beta, "beta");
  if (!needs_graph({q, k, v, value(g), beta, value(initial_state)})) {
    at::AutoDispatchBelowADInplaceOrView guard;  // inference: nothing saved
    return inference_op().call(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens);
  }
  auto r = GatedDeltaRuleFunction::apply(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens);
  return {r[0], r[1]};
}

Grads gated_delta_rule_backward_autograd(const optional<Tensor>& grad_o, const optional<Tensor>& grad_final_state,
                                         const Tensor& q, const Tensor& k, const Tensor& v,
                                         const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                         const optional<Tensor>& initial_state, bool l2norm,
                                         const optional<Tensor>& cu_seqlens, const Tensor& checkpoints,
                                         std::array<bool, 6> output_mask) {
  reject_double_backward("gated_delta_rule", {value(grad_o), value(grad_final_state), q, k, v, value(g), beta,
                                              value(initial_state)});
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_o, grad_final_state, q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens,
                            checkpoints, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Autograd, m) {
  m.impl("gated_delta_rule", TORCH_FN(gated_delta_rule_autograd));
  m.impl("_gated_delta_rule_backward", TORCH_FN(gated_delta_rule_backward_autograd));
}

}  // namespace autograd
}  // namespace torch_rnn_ext
