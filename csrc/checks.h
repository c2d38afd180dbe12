#pragma once
// Argument validation shared by all ops, CPU and Meta kernels alike. Every op validates here, before any
// data pointer is touched, with messages that name the argument, what was expected and what came. Size
// checks take the size type of the caller (int64_t on CPU, c10::SymInt in Meta kernels: see compat.h).
#include <ATen/ATen.h>

#include <initializer_list>
#include <sstream>

#include "compat.h"

namespace torch_rnn_ext {

// t lives on `device`: the CPU for CPU kernels, meta for Meta kernels (where every other argument must
// be meta too).
inline void check_defined(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, ": expected a tensor, got None");
}

inline void check_device(const at::Tensor& t, const c10::Device& device, const char* name) {
  check_defined(t, name);
  if (device.is_cpu()) {
    TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got a tensor on ", t.device());
  } else {
    TORCH_CHECK(t.device() == device, name, ": expected a tensor on ", device,
                " (the device of the other arguments), got a tensor on ", t.device());
  }
}

inline void check_cpu(const at::Tensor& t, const char* name) { check_device(t, at::kCPU, name); }

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected dtype float32 or float64, got ", t.scalar_type());
}

// `of` names the argument whose dtype all others must have.
inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name, const char* of = "input") {
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, " (the dtype of ", of, "), got ",
              t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got a ", t.dim(), "-D tensor of size ",
              t.sizes());
}

template <typename S>
void check_sizes(const at::Tensor& t, c10::ArrayRef<S> expected, const char* name) {
  const c10::ArrayRef<S> got = sizes_of<S>(t);
  bool same = got.size() == expected.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == expected[i];
  TORCH_CHECK(same, name, ": expected size ", expected, ", got ", got);
}

// A tensor on input's device, of input's dtype, with exactly the given sizes.
template <typename S>
void check_like(const at::Tensor& t, const at::Tensor& input, c10::ArrayRef<S> expected, const char* name,
                const char* of = "input") {
  check_device(t, input.device(), name);
  check_dtype(t, input.scalar_type(), name, of);
  check_sizes<S>(t, expected, name);
}

template <typename S>
void check_optional_like(const optional<at::Tensor>& t, const at::Tensor& input, c10::ArrayRef<S> expected,
                         const char* name, const char* of = "input") {
  if (t.has_value() && t->defined()) check_like<S>(*t, input, expected, name, of);
}

inline bool present(const optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The product of sizes, checked: sizes of different arguments multiplied (a state's, a workspace's, a
// count of tensors) can overflow int64 where no tensor's own numel does. Raises, naming `what`, when the
// product exceeds 2^63 - 1; symbolic sizes (Meta kernels under torch.compile) are not checked here, the
// CPU kernel checks their values.
template <typename S>
S checked_product(const char* op, const char* what, std::initializer_list<S> sizes) {
  bool known = true;
  int64_t product = 1;
  bool overflow = false;
  for (const S& s : sizes) {
    const auto v = concrete(s);
    if (!v) {
      known = false;
      break;
    }
    overflow |= __builtin_mul_overflow(product, *v, &product);
  }
  if (known) {
    if (overflow) {
      std::ostringstream list;
      for (const S& s : sizes) list << (list.tellp() > 0 ? " x " : "") << s;
      TORCH_CHECK(false, op, ": ", what, ": ", list.str(), " overflows int64 (more than 2^63 - 1 elements)");
    }
    return S(product);
  }
  S out = 1;
  for (const S& s : sizes) out = out * s;
  return out;
}

}  // namespace torch_rnn_ext
