// Meta kernels of the gated_delta_rule ops: the CPU kernels' checks (ops/delta_rule_shapes.h) and output
// sizes, strides (all contiguous) and dtypes, on SymInts.
#include <torch/library.h>

#include <array>
#include <tuple>

#include "checks.h"
#include "ops/delta_rule_shapes.h"

namespace torch_rnn_ext {
namespace meta {
namespace {

using at::Tensor;
using S = c10::SymInt;

std::tuple<Tensor, Tensor, Tensor> forward_meta(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                                const optional<Tensor>& initial_state, bool l2norm,
                                                const optional<Tensor>& cu_seqlens) {
  const DeltaShape<S> d = check_gated_delta_rule<S>(at::kMeta, q, k, v, g, beta, initial_state, cu_seqlens);
  const auto opts = q.options();
  return {empty_of({d.B, d.T, d.HV, d.V}, opts), empty_of({d.N, d.HV, d.K, d.V}, opts),
          empty_of({d.B, scan_chunks(d.T), d.HV, d.K, d.V}, opts)};
}

std::tuple<Tensor, Tensor> gated_delta_rule_meta(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                                 const optional<Tensor>& initial_state, bool l2norm,
                                                 const optional<Tensor>& cu_seqlens) {
  auto r = forward_meta(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_meta(
    const optional<Tensor>& grad_o, const optional<Tensor>& grad_final_state, const Tensor& q, const Tensor& k,
    const Tensor& v, const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
    const optional<Tensor>& initial_state, bool l2norm, const optional<Tensor>& cu_seqlens,
    const Tensor& checkpoints, std::array<bool, 6> mask) {
  const DeltaShape<S> d = check_gated_delta_rule<S>(at::kMeta, q, k, v, g, beta, initial_state, cu_seqlens);
  check_gated_delta_rule_backward_args<S>(d, q, v, checkpoints, grad_o, grad_final_state);
  const auto opts = q.options();
  return {empty_if(mask[0], q.sym_sizes(), opts),
          empty_if(mask[1], q.sym_sizes(), opts),
          empty_if(mask[2], v.sym_sizes(), opts),
          empty_if(mask[3] && d.has_gate, d.has_gate ? g->sym_sizes() : q.sym_sizes(), opts),
          empty_if(mask[4], {d.B, d.T, d.HV}, opts),
          empty_if(mask[5], {d.N, d.HV, d.K, d.V}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Meta, m) {
  m.impl("gated_delta_rule", TORCH_FN(gated_delta_rule_meta));
  m.impl("_gated_delta_rule_forward", TORCH_FN(forward_meta));
  m.impl("_gated_delta_rule_backward", TORCH_FN(backward_meta));
}

TRE_BELOW_AUTOGRAD_ON_META("_gated_delta_rule_forward")

}  // namespace meta
}  // namespace torch_rnn_ext
