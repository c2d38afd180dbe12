#pragma once
// The shape logic of the scan ops (selective_scan, wkv4), shared by their CPU kernels (int64_t sizes) and
// their Meta kernels (c10::SymInt sizes): argument checks and the sizes of every output.
#include <ATen/ATen.h>

#include "checks.h"
#include "kernels/scans.h"  // kChunk

namespace torch_rnn_ext {

// Checkpoints backward keeps: one state per kChunk steps of a sequence of L steps.
template <typename S>
S scan_chunks(const S& L) {
  return (L + (kernels::kChunk - 1)) / kernels::kChunk;
}

// How selective_scan's B or C is given: constant (dim, N), or varying with `groups` groups
// ((batch, N, L) is one group).
template <typename S>
struct Operand {
  bool varying = false;
  S groups = 1;
  S per_group = 0;  // channels per group (dim when constant)
};

template <typename S>
struct ScanShape {
  S batch = 0, dim = 0, L = 0, N = 0;
  Operand<S> B, C;
};

template <typename S>
Operand<S> check_operand(const at::Tensor& t, const at::Tensor& u, const ScanShape<S>& g, const char* name) {
  check_device(t, u.device(), name);
  check_dtype(t, u.scalar_type(), name, "u");
  Operand<S> o;
  if (t.dim() == 2) {
    check_sizes<S>(t, {g.dim, g.N}, name);
    o.per_group = g.dim;
    return o;
  }
  TORCH_CHECK(t.dim() == 3 || t.dim() == 4, "selective_scan: ", name,
              ": expected (dim, d_state), (batch, d_state, L) or (batch, G, d_state, L), got a ", t.dim(),
              "-D tensor of size ", t.sym_sizes());
  o.varying = true;
  o.groups = t.dim() == 4 ? size_of<S>(t, 1) : S(1);
  TORCH_CHECK(o.groups >= 1 && g.dim % o.groups == 0, "selective_scan: ", name, ": the number of groups G = ",
              o.groups, " (size 1 of a (batch, G, d_state, L) tensor) does not divide dim = ", g.dim);
  TORCH_CHECK(size_of<S>(t, -2) == g.N, "selective_scan: ", name, ": d_state (size ", t.dim() - 2, ") is ",
              size_of<S>(t, -2), " but A has d_state ", g.N);
  o.per_group = g.dim / o.groups;
  if (t.dim() == 3)
    check_sizes<S>(t, {g.batch, g.N, g.L}, name);
  else
    check_sizes<S>(t, {g.batch, o.groups, g.N, g.L}, name);
  return o;
}

template <typename S>
ScanShape<S> check_selective_scan(const c10::Device& device, const at::Tensor& u, const at::Tensor& delta,
                                  const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                  const optional<at::Tensor>& D, const optional<at::Tensor>& z,
                                  const optional<at::Tensor>& delta_bias,
                                  const optional<at::Tensor>& initial_state) {
  check_device(u, device, "u");
  check_floating(u, "u");
  TORCH_CHECK(u.dim() == 3, "selective_scan: u: expected a 3-D tensor (batch, dim, L), got a ", u.dim(),
              "-D tensor of size ", u.sym_sizes());
  ScanShape<S> g;
  g.batch = size_of<S>(u, 0);
  g.dim = size_of<S>(u, 1);
  g.L = size_of<S>(u, 2);
  TORCH_CHECK(g.L >= 1, "selective_scan: u: expected a sequence of at least one step, got size ", u.sym_sizes());
  check_like<S>(delta, u, sizes_of<S>(u), "delta", "u");
  check_device(A, device, "A");
  check_dtype(A, u.scalar_type(), "A", "u");
  check_dim(A, 2, "A");
  TORCH_CHECK(size_of<S>(A, 0) == g.dim, "selective_scan: A: expected size (dim, d_state) = (", g.dim,
              ", d_state), got ", A.sym_sizes());
  g.N = size_of<S>(A, 1);
  TORCH_CHECK(g.N >= 1, "selective_scan: A: expected d_state >= 1, got size ", A.sym_sizes());
  g.B = check_operand<S>(B, u, g, "B");
  g.C = check_operand<S>(C, u, g, "C");
  check_optional_like<S>(D, u, {g.dim}, "D", "u");
  check_optional_like<S>(z, u, sizes_of<S>(u), "z", "u");
  check_optional_like<S>(delta_bias, u, {g.dim}, "delta_bias", "u");
  // The state, and the checkpoints training keeps, span u's and A's sizes: no tensor bounds their product.
  checked_product<S>("selective_scan", "u and A: batch x dim x chunks of L x d_state (the saved states)",
                     {g.batch, g.dim, scan_chunks(g.L), g.N});
  check_optional_like<S>(initial_state, u, {g.batch, g.dim, g.N}, "initial_state", "u");
  return g;
}

// What selective_scan's backward takes besides the forward's arguments.
template <typename S>
void check_selective_scan_backward_args(const ScanShape<S>& g, const at::Tensor& u, const at::Tensor& checkpoints,
                                        const optional<at::Tensor>& grad_out,
                                        const optional<at::Tensor>& grad_last_state) {
  check_like<S>(checkpoints, u, {g.batch, g.dim, scan_chunks(g.L), g.N}, "checkpoints", "u");
  check_optional_like<S>(grad_out, u, sizes_of<S>(u), "grad_out", "u");
  check_optional_like<S>(grad_last_state, u, {g.batch, g.dim, g.N}, "grad_last_state", "u");
}

template <typename S>
struct WkvShape {
  S batch = 0, T = 0, C = 0;
};

template <typename S>
WkvShape<S> check_wkv4(const c10::Device& device, const at::Tensor& time_decay, const at::Tensor& time_first,
                       const at::Tensor& k, const at::Tensor& v, const optional<at::Tensor>& state) {
  check_device(k, device, "k");
  check_floating(k, "k");
  TORCH_CHECK(k.dim() == 3, "wkv4: k: expected a 3-D tensor (batch, T, C), got a ", k.dim(), "-D tensor of size ",
              k.sym_sizes());
  WkvShape<S> g{size_of<S>(k, 0), size_of<S>(k, 1), size_of<S>(k, 2)};
  TORCH_CHECK(g.T >= 1, "wkv4: k: expected a sequence of at least one step, got size ", k.sym_sizes());
  check_like<S>(v, k, sizes_of<S>(k), "v", "k");
  check_like<S>(time_decay, k, {g.C}, "time_decay", "k");
  check_like<S>(time_first, k, {g.C}, "time_first", "k");
  checked_product<S>("wkv4", "k: batch x chunks of T x 3 x C (the saved states)", {g.batch, scan_chunks(g.T), S(3), g.C});
  check_optional_like<S>(state, k, {g.batch, 3, g.C}, "state", "k");
  return g;
}

// What wkv4's backward takes besides the forward's arguments.
template <typename S>
void check_wkv4_backward_args(const WkvShape<S>& g, const at::Tensor& k, const at::Tensor& checkpoints,
                              const optional<at::Tensor>& grad_y, const optional<at::Tensor>& grad_new_state) {
  check_like<S>(checkpoints, k, {g.batch, scan_chunks(g.T), 3, g.C}, "checkpoints", "k");
  check_optional_like<S>(grad_y, k, sizes_of<S>(k), "grad_y", "k");
  check_optional_like<S>(grad_new_state, k, {g.batch, 3, g.C}, "grad_new_state", "k");
}

}  // namespace torch_rnn_ext
