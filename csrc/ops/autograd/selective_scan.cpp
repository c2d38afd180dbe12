// Autograd of selective_scan: a C++ autograd Function whose forward runs the saving forward op below
// autograd and whose backward calls the _selective_scan_backward op. Registered under the Autograd key,
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

using ScanSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                 const Tensor&, const optional<Tensor>&,
                                                 const optional<Tensor>&, const optional<Tensor>&, bool,
                                                 const optional<Tensor>&);

const auto& inference_op() {
  static auto op = find_op<ScanSignature>("torch_rnn_ext::selective_scan");
  return op;
}

const auto& forward_op() {
  using ForwardSignature = std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&,
      const optional<Tensor>&, const optional<Tensor>&, bool, const optional<Tensor>&);
  static auto op = find_op<ForwardSignature>("torch_rnn_ext::_selective_scan_forward");
  return op;
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using BackwardSignature = Grads(const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const optional<Tensor>&,
                                const optional<Tensor>&, const optional<Tensor>&, bool,
                                const optional<Tensor>&, const Tensor&, std::array<bool, 9>);

const auto& backward_op() {
  static auto op = find_op<BackwardSignature>("torch_rnn_ext::_selective_scan_backward");
  return op;
}

class SelectiveScanFunction : public torch::autograd::Function<SelectiveScanFunction> {
 public:
  // Absent tensors are passed as nullopt, so they are not graph inputs; the saved presence flags map
  // each argument slot (0 u, 1 delta, 2 A, 3 B, 4 C, 5 D, 6 z, 7 delta_bias, 8 initial_state) to its edge.
  static variable_list forward(AutogradContext* ctx, const Tensor& u, const Tensor& delta, const Tensor& A,
                               const Tensor& B, const Tensor& C, const optional<Tensor>& D,
                               const optional<Tensor>& z, const optional<Tensor>& delta_bias,
                               bool delta_softplus, const optional<Tensor>& initial_state) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, last_state, checkpoints] =
        forward_op().call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
    ctx->save_for_backward({u, delta, A, B, C, value(D), value(z), value(delta_bias), value(initial_state),
                            checkpoints});
    ctx->saved_data["delta_softplus"] = delta_softplus;
    ctx->saved_data["present"] = c10::List<bool>(
        {true, true, true, true, true, present(D), present(z), present(delta_bias), present(initial_state)});
    return {out, last_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto mask = input_grad_mask<9>(ctx, ctx->saved_data["present"].toBoolList());
    auto [gu, gdelta, gA, gB, gC, gD, gz, gbias, ginit] = backward_op().call(
        opt(grads[0]), opt(grads[1]), s[0], s[1], s[2], s[3], s[4], opt(s[5]), opt(s[6]), opt(s[7]),
        ctx->saved_data["delta_softplus"].toBool(), opt(s[8]), s[9], mask);
    return {gu, gdelta, gA, gB, gC, gD, gz, gbias, Tensor(), ginit};
  }
};

std::tuple<Tensor, Tensor> selective_scan_autograd(const Tensor& u, const Tensor& delta, const Tensor& A,
                                                   const Tensor& B, const Tensor& C, const optional<Tensor>& D,
                                                   const optional<Tensor>& z, const optional<Tensor>& delta_bias,
                                                   bool delta_softplus, const optional<Tensor>& initial_state) {
  // before the autograd Function, which reads every input's device
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{u, "u"}, {delta, "delta"}, {A, "A"},
                                {B, "B"}, {C, "C"}})
    check_defined(t, name);
  if (!needs_graph({u, delta, A, B, C, value(D), value(z), value(delta_bias), value(initial_state)})) {
    at::AutoDispatchBelowADInplaceOrView guard;  // inference: nothing saved
    return inference_op().call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
  }
  auto r = SelectiveScanFunction::apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
  return {r[0], r[1]};
}

Grads selective_scan_backward_autograd(const optional<Tensor>& grad_out, const optional<Tensor>& grad_last_state,
                                       const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                       const Tensor& C, const optional<Tensor>& D, const optional<Tensor>& z,
                                       const optional<Tensor>& delta_bias, bool delta_softplus,
                                       const optional<Tensor>& initial_state, const Tensor& checkpoints,
                                       std::array<bool, 9> output_mask) {
  reject_double_backward("selective_scan",
                         {value(grad_out), value(grad_last_state), u, delta, A, B, C, value(D), value(z),
                          value(delta_bias), value(initial_state)});
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                            initial_state, checkpoints, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Autograd, m) {
  m.impl("selective_scan", TORCH_FN(selective_scan_autograd));
  m.impl("_selective_scan_backward", TORCH_FN(selective_scan_backward_autograd));
}

}  // namespace autograd
}  // namespace torch_rnn_ext
