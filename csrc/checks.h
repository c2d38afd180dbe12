#pragma once
// Argument validation shared by all ops. Every op validates here, before any data pointer is touched,
// with messages that name the argument, what was expected and what came.
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace torch_rnn_ext {

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got a tensor on ", t.device());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected dtype float32 or float64, got ", t.scalar_type());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, " (the dtype of input), got ",
              t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got a ", t.dim(), "-D tensor of size ",
              t.sizes());
}

inline void check_sizes(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes().equals(expected), name, ": expected size ", expected, ", got ", t.sizes());
}

// A CPU tensor of input's dtype with exactly the given sizes.
inline void check_like(const at::Tensor& t, const at::Tensor& input, at::IntArrayRef expected,
                       const char* name) {
  check_cpu(t, name);
  check_dtype(t, input.scalar_type(), name);
  check_sizes(t, expected, name);
}

inline void check_optional_like(const c10::optional<at::Tensor>& t, const at::Tensor& input,
                                at::IntArrayRef expected, const char* name) {
  if (t.has_value() && t->defined()) check_like(*t, input, expected, name);
}

inline bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace torch_rnn_ext
