// Schemas of the gated_delta_rule op family and its C++ API.
#include "ops/gated_delta_rule.h"

#include <torch/library.h>

#include "ops/dispatch.h"

namespace torch_rnn_ext {

std::tuple<at::Tensor, at::Tensor> gated_delta_rule(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const optional<at::Tensor>& g, const at::Tensor& beta,
                                                    optional<double> scale,
                                                    const optional<at::Tensor>& initial_state,
                                                    bool use_qk_l2norm_in_kernel,
                                                    const optional<at::Tensor>& cu_seqlens) {
  static auto op = find_op<decltype(gated_delta_rule)>("torch_rnn_ext::gated_delta_rule");
  return op.call(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, cu_seqlens);
}

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  def_op(m,
         "gated_delta_rule(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor beta, float? scale=None, "
         "Tensor? initial_state=None, bool use_qk_l2norm_in_kernel=False, Tensor? cu_seqlens=None) "
         "-> (Tensor o, Tensor final_state)");
  // Forward that also returns what backward needs: the state before every kChunk-th step (global
  // position), (batch, ceil(T / kChunk), HV, K, V).
  def_op(m,
         "_gated_delta_rule_forward(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor beta, float? scale, "
         "Tensor? initial_state, bool use_qk_l2norm_in_kernel, Tensor? cu_seqlens) "
         "-> (Tensor o, Tensor final_state, Tensor checkpoints)");
  def_op(m,
         "_gated_delta_rule_backward(Tensor? grad_o, Tensor? grad_final_state, Tensor q, Tensor k, Tensor v, "
         "Tensor? g, Tensor beta, float? scale, Tensor? initial_state, bool use_qk_l2norm_in_kernel, "
         "Tensor? cu_seqlens, Tensor checkpoints, bool[6] output_mask) "
         "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_g, Tensor grad_beta, "
         "Tensor grad_initial_state)");
}

}  // namespace torch_rnn_ext
