// Meta kernels of the wkv4 ops: the CPU kernels' checks (ops/scan_shapes.h) and output sizes, strides
// (all contiguous) and dtypes, on SymInts.
#include <torch/library.h>

#include <array>
#include <tuple>

#include "checks.h"
#include "ops/scan_shapes.h"

namespace torch_rnn_ext {
namespace meta {
namespace {

using at::Tensor;
using S = c10::SymInt;

std::tuple<Tensor, Tensor, Tensor> wkv4_forward_meta(const Tensor& time_decay, const Tensor& time_first,
                                                     const Tensor& k, const Tensor& v, const optional<Tensor>& state) {
  const WkvShape<S> g = check_wkv4<S>(at::kMeta, time_decay, time_first, k, v, state);
  const auto opts = k.options();
  return {empty_of({g.batch, g.T, g.C}, opts), empty_of({g.batch, 3, g.C}, opts),
          empty_of({g.batch, scan_chunks(g.T), 3, g.C}, opts)};
}

std::tuple<Tensor, Tensor> wkv4_meta(const Tensor& time_decay, const Tensor& time_first, const Tensor& k,
                                     const Tensor& v, const optional<Tensor>& state) {
  auto r = wkv4_forward_meta(time_decay, time_first, k, v, state);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> wkv4_backward_meta(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_new_state, const Tensor& time_decay,
    const Tensor& time_first, const Tensor& k, const Tensor& v, const optional<Tensor>& state,
    const Tensor& checkpoints, std::array<bool, 5> mask) {
  const WkvShape<S> g = check_wkv4<S>(at::kMeta, time_decay, time_first, k, v, state);
  check_wkv4_backward_args<S>(g, k, checkpoints, grad_y, grad_new_state);
  const auto opts = k.options();
  return {empty_if(mask[0], {g.C}, opts), empty_if(mask[1], {g.C}, opts), empty_if(mask[2], k.sym_sizes(), opts),
          empty_if(mask[3], k.sym_sizes(), opts), empty_if(mask[4], {g.batch, 3, g.C}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Meta, m) {
  m.impl("wkv4", TORCH_FN(wkv4_meta));
  m.impl("_wkv4_forward", TORCH_FN(wkv4_forward_meta));
  m.impl("_wkv4_backward", TORCH_FN(wkv4_backward_meta));
}

TRE_BELOW_AUTOGRAD_ON_META("_wkv4_forward")

}  // namespace meta
}  // namespace torch_rnn_ext
