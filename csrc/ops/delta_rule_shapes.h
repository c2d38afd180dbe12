#pragma once
// The shape logic of the gated_delta_rule ops, shared by the CPU kernels (int64_t sizes) and the Meta
// kernels (c10::SymInt sizes): argument checks and the sizes of every output.
#include <ATen/ATen.h>

#include "checks.h"
#include "ops/scan_shapes.h"  // scan_chunks

namespace torch_rnn_ext {

template <typename S>
struct DeltaShape {
  S B = 0, T = 0, H = 0, HV = 0, K = 0, V = 0;
  S N = 0;  // sequences: B, or the number cu_seqlens delimits
  bool has_gate = false, per_key_gate = false, varlen = false;
};

template <typename S>
DeltaShape<S> check_gated_delta_rule(const c10::Device& device, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const optional<at::Tensor>& g, const at::Tensor& beta,
                                     const optional<at::Tensor>& initial_state,
                                     const optional<at::Tensor>& cu_seqlens) {
  check_device(q, device, "q");
  check_floating(q, "q");
  TORCH_CHECK(q.dim() == 4, "gated_delta_rule: q: expected a 4-D tensor (batch, T, H, K), got a ", q.dim(),
              "-D tensor of size ", q.sym_sizes());
  DeltaShape<S> d;
  d.B = size_of<S>(q, 0);
  d.T = size_of<S>(q, 1);
  d.H = size_of<S>(q, 2);
  d.K = size_of<S>(q, 3);
  TORCH_CHECK(d.T >= 1, "gated_delta_rule: q: expected a sequence of at least one step, got size ", q.sym_sizes());
  TORCH_CHECK(d.H >= 1 && d.K >= 1, "gated_delta_rule: q: expected at least one head of at least one key channel, got size ",
              q.sym_sizes());
  check_like<S>(k, q, sizes_of<S>(q), "k", "q");
  check_device(v, device, "v");
  check_dtype(v, q.scalar_type(), "v", "q");
  TORCH_CHECK(v.dim() == 4, "gated_delta_rule: v: expected a 4-D tensor (batch, T, HV, V), got a ", v.dim(),
              "-D tensor of size ", v.sym_sizes());
  TORCH_CHECK(size_of<S>(v, 0) == d.B && size_of<S>(v, 1) == d.T, "gated_delta_rule: v: expected size (", d.B,
              ", ", d.T, ", HV, V) (batch and T of q), got ", v.sym_sizes());
  d.HV = size_of<S>(v, 2);
  d.V = size_of<S>(v, 3);
  TORCH_CHECK(d.HV >= 1 && d.V >= 1, "gated_delta_rule: v: expected at least one head of at least one value channel, got size ",
              v.sym_sizes());
  TORCH_CHECK(d.HV % d.H == 0, "gated_delta_rule: the number of q/k heads H = ", d.H,
              " (size 2 of q) does not divide the number of value heads HV = ", d.HV, " (size 2 of v)");
  if (present(g)) {
    d.has_gate = true;
    check_device(*g, device, "g");
    check_dtype(*g, q.scalar_type(), "g", "q");
    TORCH_CHECK(g->dim() == 3 || g->dim() == 4, "gated_delta_rule: g: expected (batch, T, HV) or (batch, T, HV, K) = (",
                d.B, ", ", d.T, ", ", d.HV, "[, ", d.K, "]), got a ", g->dim(), "-D tensor of size ", g->sym_sizes());
    d.per_key_gate = g->dim() == 4;
    if (d.per_key_gate)
      check_sizes<S>(*g, {d.B, d.T, d.HV, d.K}, "g");
    else
      check_sizes<S>(*g, {d.B, d.T, d.HV}, "g");
  }
  check_like<S>(beta, q, {d.B, d.T, d.HV}, "beta", "q");
  d.N = d.B;
  if (present(cu_seqlens)) {
    d.varlen = true;
    // offsets may stay on the CPU whatever the device (as torch.nn's batch_sizes do)
    if (!cu_seqlens->device().is_cpu()) check_device(*cu_seqlens, device, "cu_seqlens");
    TORCH_CHECK(cu_seqlens->scalar_type() == at::kLong, "cu_seqlens: expected dtype int64, got ",
                cu_seqlens->scalar_type());
    TORCH_CHECK(cu_seqlens->dim() == 1 && size_of<S>(*cu_seqlens, 0) >= 2,
                "cu_seqlens: expected a 1-D tensor of N + 1 >= 2 offsets, got size ", cu_seqlens->sym_sizes());
    TORCH_CHECK(d.B == 1, "cu_seqlens: the sequences are packed along T of a batch of one, but q has batch size ",
                d.B);
    d.N = size_of<S>(*cu_seqlens, 0) - 1;
  }
  // The state and the checkpoints training keeps span several arguments' sizes.
  checked_product<S>("gated_delta_rule", "q, k and v: batch x chunks of T x HV x K x V (the saved states)",
                     {d.B, scan_chunks(d.T), d.HV, d.K, d.V});
  checked_product<S>("gated_delta_rule", "sequences x HV x K x V (the state)", {d.N, d.HV, d.K, d.V});
  check_optional_like<S>(initial_state, q, {d.N, d.HV, d.K, d.V}, "initial_state", "q");
  return d;
}

// What the backward takes besides the forward's arguments.
template <typename S>
void check_gated_delta_rule_backward_args(const DeltaShape<S>& d, const at::Tensor& q, const at::Tensor& v,
                                          const at::Tensor& checkpoints, const optional<at::Tensor>& grad_o,
                                          const optional<at::Tensor>& grad_final_state) {
  check_like<S>(checkpoints, q, {d.B, scan_chunks(d.T), d.HV, d.K, d.V}, "checkpoints", "q");
  check_optional_like<S>(grad_o, q, sizes_of<S>(v), "grad_o", "q");
  check_optional_like<S>(grad_final_state, q, {d.N, d.HV, d.K, d.V}, "grad_final_state", "q");
}

}  // namespace torch_rnn_ext
