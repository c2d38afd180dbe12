// Schemas of the selective_scan op family and its C++ API.
#include "ops/selective_scan.h"

#include <torch/library.h>

#include "ops/dispatch.h"

namespace torch_rnn_ext {

std::tuple<at::Tensor, at::Tensor> selective_scan(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const optional<at::Tensor>& D, const optional<at::Tensor>& z,
    const optional<at::Tensor>& delta_bias, bool delta_softplus,
    const optional<at::Tensor>& initial_state) {
  static auto op = find_op<decltype(selective_scan)>("torch_rnn_ext::selective_scan");
  return op.call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
}

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  def_op(m, 
      "selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D=None, "
      "Tensor? z=None, Tensor? delta_bias=None, bool delta_softplus=False, Tensor? initial_state=None) "
      "-> (Tensor out, Tensor last_state)");
  // Forward that also returns what backward needs: the state before every kChunk-th step,
  // (batch, dim, ceil(L / kChunk), N).
  def_op(m, 
      "_selective_scan_forward(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state) "
      "-> (Tensor out, Tensor last_state, Tensor checkpoints)");
  def_op(m, 
      "_selective_scan_backward(Tensor? grad_out, Tensor? grad_last_state, Tensor u, Tensor delta, "
      "Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, "
      "Tensor? initial_state, Tensor checkpoints, bool[9] output_mask) "
      "-> (Tensor grad_u, Tensor grad_delta, Tensor grad_A, Tensor grad_B, Tensor grad_C, Tensor grad_D, "
      "Tensor grad_z, Tensor grad_delta_bias, Tensor grad_initial_state)");
}

}  // namespace torch_rnn_ext
