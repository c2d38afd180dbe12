// Meta kernels of the selective_scan ops: the CPU kernels' checks (ops/scan_shapes.h) and output sizes,
// strides (all contiguous) and dtypes, on SymInts.
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

std::tuple<Tensor, Tensor, Tensor> selective_scan_forward_meta(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const optional<Tensor>& D, const optional<Tensor>& z, const optional<Tensor>& delta_bias, bool delta_softplus,
    const optional<Tensor>& initial_state) {
  const ScanShape<S> g = check_selective_scan<S>(at::kMeta, u, delta, A, B, C, D, z, delta_bias, initial_state);
  const auto opts = u.options();
  return {empty_of({g.batch, g.dim, g.L}, opts), empty_of({g.batch, g.dim, g.N}, opts),
          empty_of({g.batch, g.dim, scan_chunks(g.L), g.N}, opts)};
}

std::tuple<Tensor, Tensor> selective_scan_meta(const Tensor& u, const Tensor& delta, const Tensor& A,
                                               const Tensor& B, const Tensor& C, const optional<Tensor>& D,
                                               const optional<Tensor>& z, const optional<Tensor>& delta_bias,
                                               bool delta_softplus, const optional<Tensor>& initial_state) {
  auto r = selective_scan_forward_meta(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selective_scan_backward_meta(
    const optional<Tensor>& grad_out, const optional<Tensor>& grad_last_state, const Tensor& u, const Tensor& delta,
    const Tensor& A, const Tensor& B, const Tensor& C, const optional<Tensor>& D, const optional<Tensor>& z,
    const optional<Tensor>& delta_bias, bool delta_softplus, const optional<Tensor>& initial,
    const Tensor& checkpoints, std::array<bool, 9> mask) {
  const ScanShape<S> g = check_selective_scan<S>(at::kMeta, u, delta, A, B, C, D, z, delta_bias, initial);
  check_selective_scan_backward_args<S>(g, u, checkpoints, grad_out, grad_last_state);
  const auto opts = u.options();
  return {empty_if(mask[0], u.sym_sizes(), opts),
          empty_if(mask[1], u.sym_sizes(), opts),
          empty_if(mask[2], A.sym_sizes(), opts),
          empty_if(mask[3], B.sym_sizes(), opts),
          empty_if(mask[4], C.sym_sizes(), opts),
          empty_if(mask[5] && present(D), {g.dim}, opts),
          empty_if(mask[6] && present(z), u.sym_sizes(), opts),
          empty_if(mask[7] && present(delta_bias), {g.dim}, opts),
          empty_if(mask[8], {g.batch, g.dim, g.N}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Meta, m) {
  m.impl("selective_scan", TORCH_FN(selective_scan_meta));
  m.impl("_selective_scan_forward", TORCH_FN(selective_scan_forward_meta));
  m.impl("_selective_scan_backward", TORCH_FN(selective_scan_backward_meta));
}

TRE_BELOW_AUTOGRAD_ON_META("_selective_scan_forward")

}  // namespace meta
}  // namespace torch_rnn_ext
