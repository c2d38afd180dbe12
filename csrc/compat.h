#pragma once
// The one place where the torch versions this library builds against (Debian's 1.13 to current 2.x) differ,
// decided by the TORCH_VERSION_* macros of torch/version.h. Everything else uses public ATen/c10 API only.
#include <ATen/ATen.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>
#include <torch/library.h>
#include <torch/version.h>

#include <optional>

#define TRE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace torch_rnn_ext {

// Optional arguments (`Tensor?` in schemas): std::optional, which c10::optional became in torch 2.4;
// before, the dispatcher's own c10::optional.
#if TRE_TORCH_AT_LEAST(2, 4)
using std::nullopt;
using std::optional;
#else
using c10::nullopt;
using c10::optional;
#endif
// `str` arguments (std::string_view in current torch).
using string_view = c10::string_view;

// Defines an op in the library, tagged pt2_compliant where the torch version has the tag (2.2 on):
// our ops behave under torch.compile and torch.export (Meta kernels, no data-dependent output shapes
// except where documented, truthful schemas).
inline void def_op(torch::Library& m, const char* schema) {
#if TRE_TORCH_AT_LEAST(2, 2)
  m.def(schema, {at::Tag::pt2_compliant_tag});
#else
  m.def(schema);
#endif
}

// The sizes an op's shape logic works on: int64_t in the CPU kernels, c10::SymInt in the Meta kernels
// (symbolic under torch.compile's dynamic shapes), so both run the same checks.
template <typename S>
inline S size_of(const at::Tensor& t, int64_t dim);
template <>
inline int64_t size_of<int64_t>(const at::Tensor& t, int64_t dim) {
  return t.size(dim);
}
template <>
inline c10::SymInt size_of<c10::SymInt>(const at::Tensor& t, int64_t dim) {
  return t.sym_size(dim);
}

template <typename S>
inline c10::ArrayRef<S> sizes_of(const at::Tensor& t);
template <>
inline c10::ArrayRef<int64_t> sizes_of<int64_t>(const at::Tensor& t) {
  return t.sizes();
}
template <>
inline c10::ArrayRef<c10::SymInt> sizes_of<c10::SymInt>(const at::Tensor& t) {
  return t.sym_sizes();
}

// The value of a size when it is known (always for int64_t; for a SymInt unless it is symbolic).
inline optional<int64_t> concrete(int64_t v) { return v; }
inline optional<int64_t> concrete(const c10::SymInt& v) {
#if TRE_TORCH_AT_LEAST(2, 1)
  if (auto i = v.maybe_as_int()) return *i;
  return nullopt;
#else
  return v.is_symbolic() ? nullopt : optional<int64_t>(v.as_int_unchecked());
#endif
}

// Registers the ops that have no autograd kernel (private forwards, which run below autograd) to fall
// through autograd on the Meta device too: torch 1.13 has no AutogradMeta fallback of its own.
#define TRE_BELOW_AUTOGRAD_ON_META(...)                                       \
  TORCH_LIBRARY_IMPL(torch_rnn_ext, AutogradMeta, m) {                        \
    for (const char* name : {__VA_ARGS__}) m.impl(name, torch::CppFunction::makeFallthrough()); \
  }

// An uninitialised contiguous tensor of the given sizes (empty_if: or undefined, unless wanted).
inline at::Tensor empty_of(c10::ArrayRef<int64_t> sizes, const at::TensorOptions& opts) {
  return at::empty(sizes, opts);
}
inline at::Tensor empty_of(c10::ArrayRef<c10::SymInt> sizes, const at::TensorOptions& opts) {
  return at::empty_symint(sizes, opts);
}

inline at::Tensor empty_if(bool wanted, c10::ArrayRef<c10::SymInt> sizes, const at::TensorOptions& opts) {
  return wanted ? at::empty_symint(sizes, opts) : at::Tensor();
}

}  // namespace torch_rnn_ext
