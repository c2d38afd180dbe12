#pragma once
// Helpers shared by the ops' autograd kernels.
#include <ATen/ATen.h>

#include "compat.h"
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <array>
#include <initializer_list>

namespace torch_rnn_ext {
namespace autograd {

inline bool any_requires_grad(std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// Whether a forward must record a graph: grad mode on and some input (of ts, or of the list more)
// requires grad.
inline bool needs_graph(std::initializer_list<at::Tensor> ts, at::TensorList more = {}) {
  if (!torch::autograd::GradMode::is_enabled()) return false;
  if (any_requires_grad(ts)) return true;
  for (const auto& t : more)
    if (t.requires_grad()) return true;
  return false;
}

inline optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? optional<at::Tensor>(t) : nullopt;
}

// opt's inverse: the tensor, or an undefined one.
inline at::Tensor value(const optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

// Which of a Function's tensor arguments need a gradient. present[i] says whether argument slot i was
// given (absent optionals are not graph inputs, so edges count only the present ones).
template <size_t N>
std::array<bool, N> input_grad_mask(torch::autograd::AutogradContext* ctx, const c10::List<bool>& present) {
  std::array<bool, N> mask{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i) mask[i] = present[i] ? ctx->needs_input_grad(edge++) : false;
  return mask;
}

// Backward ops are not differentiable themselves: when asked to be (create_graph=True), say so
// instead of returning gradients without a graph.
inline void reject_double_backward(const char* op, std::initializer_list<at::Tensor> ts) {
  TORCH_CHECK(!needs_graph(ts), "torch_rnn_ext: ", op,
              " layer does not support double backward (backward with create_graph=True)");
}

}  // namespace autograd
}  // namespace torch_rnn_ext
