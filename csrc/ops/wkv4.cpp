// Schemas of the wkv4 op family and its C++ API.
#include "ops/wkv4.h"

#include <torch/library.h>

#include "ops/dispatch.h"

namespace torch_rnn_ext {

std::tuple<at::Tensor, at::Tensor> wkv4(const at::Tensor& time_decay, const at::Tensor& time_first,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const optional<at::Tensor>& state) {
  static auto op = find_op<decltype(wkv4)>("torch_rnn_ext::wkv4");
  return op.call(time_decay, time_first, k, v, state);
}

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  def_op(m, 
      "wkv4(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor? state=None) "
      "-> (Tensor y, Tensor new_state)");
  // Forward that also returns what backward needs: the state before every kChunk-th step,
  // (batch, ceil(T / kChunk), 3, C).
  def_op(m, 
      "_wkv4_forward(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor? state) "
      "-> (Tensor y, Tensor new_state, Tensor checkpoints)");
  def_op(m, 
      "_wkv4_backward(Tensor? grad_y, Tensor? grad_new_state, Tensor time_decay, Tensor time_first, "
      "Tensor k, Tensor v, Tensor? state, Tensor checkpoints, bool[5] output_mask) "
      "-> (Tensor grad_time_decay, Tensor grad_time_first, Tensor grad_k, Tensor grad_v, Tensor grad_state)");
}

}  // namespace torch_rnn_ext
