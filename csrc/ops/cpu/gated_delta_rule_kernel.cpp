// CPU kernels of the gated_delta_rule ops: validation, layout, and the panel loops of
// kernels/delta_rule.h spread with at::parallel_for over (sequence, value head, panel of state columns) in
// forward and over (sequence, value head) in backward, whose panels add into the head's gradients in
// order. Every output element is written by one task, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "checks.h"
#include "kernels/scans.h"
#include "ops/cpu/scan_common.h"
#include "ops/delta_rule_shapes.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

using at::Tensor;
using kernels::kChunk;
using kernels::kDeltaWidth;

constexpr double kL2NormEps = 1e-6;

struct DeltaGeometry : DeltaShape<int64_t> {
  int64_t panels() const { return (V + kDeltaWidth - 1) / kDeltaWidth; }
  int64_t group() const { return HV / H; }
  int64_t chunks() const { return kernels::num_chunks(T); }
  int64_t gate_width() const { return per_key_gate ? K : 1; }
};

// One sequence: batch row b, steps [start, end) of it.
struct Sequence {
  int64_t b, start, end;
};

// The sequences of a call: the batch rows, or the ones cu_seqlens delimits (whose values are checked here:
// the Meta kernels cannot see them).
std::vector<Sequence> sequences_of(const DeltaGeometry& d, const optional<Tensor>& cu_seqlens) {
  std::vector<Sequence> seqs;
  if (!d.varlen) {
    for (int64_t b = 0; b < d.B; ++b) seqs.push_back({b, 0, d.T});
    return seqs;
  }
  const Tensor cu = cu_seqlens->contiguous();
  const int64_t* c = cu.data_ptr<int64_t>();
  TORCH_CHECK(c[0] == 0, "cu_seqlens: expected the first offset to be 0, got ", c[0]);
  for (int64_t n = 0; n < d.N; ++n) {
    TORCH_CHECK(c[n + 1] > c[n], "cu_seqlens: expected strictly increasing offsets, got ", c[n + 1],
                " after ", c[n], " (at index ", n + 1, ")");
    seqs.push_back({0, c[n], c[n + 1]});
  }
  TORCH_CHECK(c[d.N] == d.T, "cu_seqlens: expected the last offset to be T = ", d.T, " (size 1 of q), got ",
              c[d.N]);
  return seqs;
}

DeltaGeometry check_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const optional<Tensor>& g,
                        const Tensor& beta, const optional<Tensor>& initial_state,
                        const optional<Tensor>& cu_seqlens) {
  DeltaGeometry d;
  static_cast<DeltaShape<int64_t>&>(d) =
      check_gated_delta_rule<int64_t>(at::kCPU, q, k, v, g, beta, initial_state, cu_seqlens);
  return d;
}

double scale_of(optional<double> scale, const DeltaGeometry& d) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(d.K));
}

// (batch, T, heads, X) -> (batch, heads, T, X), each row through f(src, dst, X): the kernel walks one
// head's steps in order, and with time-major rows a step of a long sequence would touch a new page of every
// operand. Raw loops rather than ATen ops: a decode step's operands are tiny and an op's overhead is not.
template <typename T, typename F>
Tensor head_major(const Tensor& x, int64_t X, const F& f) {
  const Tensor src = x.contiguous();
  const int64_t B = x.size(0), steps = x.size(1), heads = x.size(2);
  Tensor out = at::empty(x.dim() == 4 ? at::IntArrayRef{B, heads, steps, X} : at::IntArrayRef{B, heads, steps},
                         x.options());
  const T* s = src.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, B * steps, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, heads * X)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / steps, t = r % steps;
      for (int64_t h = 0; h < heads; ++h) f(s + (r * heads + h) * X, o + ((b * heads + h) * steps + t) * X, X);
    }
  });
  return out;
}

template <typename T>
void copy_row(const T* src, T* dst, int64_t n) {
  std::copy(src, src + n, dst);
}

// head_major without a transform: with one step (a decode call) both layouts are the same memory.
template <typename T>
Tensor head_major_copy(const Tensor& x, int64_t X) {
  return x.size(1) == 1 ? x.contiguous() : head_major<T>(x, X, copy_row<T>);
}

template <typename T>
void exp_row(const T* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = std::exp(src[i]);
}

// 1 / sqrt(sum of x^2 + eps) of one row: the L2 norm's forward and backward share it. The sum runs in 8
// lanes (element i into lane i % 8, which the compiler makes one vector) added by a fixed tree: a fixed
// order for any thread count, without a chain of n dependent additions.
template <typename T>
T l2norm_rstd(const T* x, int64_t n) {
  T lane[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += x[i + j] * x[i + j];
  for (int j = 0; i + j < n; ++j) lane[j] += x[i + j] * x[i + j];
  const T sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  return T(1) / std::sqrt(sum + T(kL2NormEps));
}

// y = x / sqrt(sum of x^2 + eps).
template <typename T>
void l2norm_row(const T* src, T* dst, int64_t n) {
  const T r = l2norm_rstd(src, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * r;
}

// The L2 norm's backward over rows of the last dimension: dx = r (dy - y (dy . y)) with y = x r.
Tensor l2norm_backward(const Tensor& dy, const Tensor& x) {
  const Tensor g = dy.contiguous(), in = x.contiguous();
  Tensor out = at::empty_like(in);
  const int64_t n = in.size(-1), rows = n == 0 ? 0 : in.numel() / n;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "l2norm_backward", [&] {
    using T = scalar_t;
    const T *gp = g.data_ptr<T>(), *xp = in.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const T *dyr = gp + row * n, *xr = xp + row * n;
        const T r = l2norm_rstd(xr, n);
        T dot = 0;
        for (int64_t i = 0; i < n; ++i) dot += dyr[i] * (xr[i] * r);
        for (int64_t i = 0; i < n; ++i) op[row * n + i] = r * (dyr[i] - (xr[i] * r) * dot);
      }
    });
  });
  return out;
}

// The inverse, for outputs: (batch, heads, T, ...) -> contiguous (batch, T, heads, ...).
Tensor time_major(const Tensor& x) { return x.transpose(1, 2).contiguous(); }

// One call's inputs in the kernel's layout (head-major, kept alive here), and raw pointers into them,
// taken before any parallel region.
template <typename T>
struct DeltaInputs {
  DeltaGeometry d;
  Tensor tq, tk, tv, tdecay, tbeta, tinit;
  const T *q, *k, *v, *decay, *beta, *init;
  T scale;

  DeltaInputs(const DeltaGeometry& geo, const Tensor& q_, const Tensor& k_, const Tensor& v_,
              const optional<Tensor>& g, const Tensor& beta_, optional<double> scale_,
              const optional<Tensor>& initial_state, bool l2norm)
      : d(geo),
        tq(l2norm ? head_major<T>(q_, geo.K, l2norm_row<T>) : head_major_copy<T>(q_, geo.K)),
        tk(l2norm ? head_major<T>(k_, geo.K, l2norm_row<T>) : head_major_copy<T>(k_, geo.K)),
        tv(head_major_copy<T>(v_, geo.V)),
        tdecay(present(g) ? head_major<T>(*g, geo.gate_width(), exp_row<T>) : Tensor()),
        tbeta(head_major_copy<T>(beta_, 1)),
        tinit(present(initial_state) ? initial_state->contiguous() : Tensor()),
        q(tq.data_ptr<T>()),
        k(tk.data_ptr<T>()),
        v(tv.data_ptr<T>()),
        decay(tdecay.defined() ? tdecay.data_ptr<T>() : nullptr),
        beta(tbeta.data_ptr<T>()),
        init(tinit.defined() ? tinit.data_ptr<T>() : nullptr),
        scale(static_cast<T>(scale_of(scale_, geo))) {}

  // Step 0 of sequence s in head `head` of `heads` of a head-major (batch, heads, T, ...) tensor, in rows.
  int64_t step0(const Sequence& s, int64_t head, int64_t heads) const { return (s.b * heads + head) * d.T + s.start; }
  int64_t first_column(int64_t panel) const { return panel * kDeltaWidth; }

  kernels::DeltaPanel<T> panel(const Sequence& s, int64_t hv, int64_t c) const {
    const int64_t qk0 = step0(s, hv / d.group(), d.H) * d.K, gw = d.gate_width();
    return {s.end - s.start,
            s.start,
            d.K,
            std::min(kDeltaWidth, d.V - first_column(c)),
            q + qk0,
            k + qk0,
            d.K,
            v + value_offset(s, hv, c),
            d.V,
            decay ? decay + step0(s, hv, d.HV) * gw : nullptr,
            gw,
            d.per_key_gate,
            beta + step0(s, hv, d.HV),
            1,
            scale};
  }
  // Offset of sequence n's head hv, panel c, in an (N, HV, K, V) state.
  int64_t state_offset(int64_t n, int64_t hv, int64_t c) const { return (n * d.HV + hv) * d.K * d.V + first_column(c); }
  // Offset of batch row b's head hv, panel c, chunk 0, in the (batch, chunks, HV, K, V) checkpoints.
  int64_t checkpoint_offset(int64_t b, int64_t hv, int64_t c) const {
    return (b * d.chunks() * d.HV + hv) * d.K * d.V + first_column(c);
  }
  kernels::DeltaStates<T> states(int64_t n, const Sequence& s, int64_t hv, int64_t c, T* ckpt) const {
    return {init ? init + state_offset(n, hv, c) : nullptr, d.V,
            ckpt ? ckpt + checkpoint_offset(s.b, hv, c) : nullptr, d.HV * d.K * d.V};
  }
  // Offset of sequence s's value head hv, panel c, in a head-major (batch, HV, T, V) tensor.
  int64_t value_offset(const Sequence& s, int64_t hv, int64_t c) const {
    return step0(s, hv, d.HV) * d.V + first_column(c);
  }
};

// Tasks are run in at most one range per thread (parallel_parts), each with its own workspace row.
int64_t parts_for(int64_t tasks) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks)); }

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                           const optional<Tensor>& initial_state, bool l2norm,
                                           const optional<Tensor>& cu_seqlens, bool save) {
  const DeltaGeometry d = check_cpu(q, k, v, g, beta, initial_state, cu_seqlens);
  const std::vector<Sequence> seqs = sequences_of(d, cu_seqlens);
  const auto opts = q.options();
  Tensor o = at::empty({d.B, d.HV, d.T, d.V}, opts);  // head-major until returned
  Tensor last = at::empty({d.N, d.HV, d.K, d.V}, opts);
  Tensor ckpt = save ? at::empty({d.B, d.chunks(), d.HV, d.K, d.V}, opts) : Tensor();
  const int64_t ws_size = kernels::delta_rule_forward_workspace(d.K);
  const int64_t per_seq = d.HV * d.panels(), tasks = d.N * per_seq, parts = parts_for(tasks);
  Tensor ws = at::empty({parts, ws_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_rule", [&] {
    using T = scalar_t;
    const DeltaInputs<T> in(d, q, k, v, g, beta, scale, initial_state, l2norm);
    T *op = o.data_ptr<T>(), *lp = last.data_ptr<T>(), *cp = save ? ckpt.data_ptr<T>() : nullptr,
      *wsp = ws.data_ptr<T>();
    parallel_parts(tasks, parts, [&](int64_t task, int64_t part) {
      const int64_t n = task / per_seq, hv = (task % per_seq) / d.panels(), c = task % d.panels();
      const Sequence& s = seqs[n];
      kernels::delta_rule_forward<T>(in.panel(s, hv, c), in.states(n, s, hv, c, cp), lp + in.state_offset(n, hv, c),
                                     op + in.value_offset(s, hv, c), d.V, wsp + part * ws_size);
    });
  });
  return {time_major(o), last, ckpt};
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Grads backward(const optional<Tensor>& grad_o, const optional<Tensor>& grad_final_state, const Tensor& q,
               const Tensor& k, const Tensor& v, const optional<Tensor>& g, const Tensor& beta,
               optional<double> scale, const optional<Tensor>& initial_state, bool l2norm,
               const optional<Tensor>& cu_seqlens, const Tensor& checkpoints, std::array<bool, 6> mask) {
  const DeltaGeometry d = check_cpu(q, k, v, g, beta, initial_state, cu_seqlens);
  check_gated_delta_rule_backward_args<int64_t>(d, q, v, checkpoints, grad_o, grad_final_state);
  const std::vector<Sequence> seqs = sequences_of(d, cu_seqlens);
  const auto opts = q.options();
  Tensor go;
  const Tensor gl = present(grad_final_state) ? grad_final_state->contiguous() : Tensor();
  const Tensor ck = checkpoints.contiguous();
  // Head-major until returned. dq and dk per value head (summed over each q/k head's group below),
  // accumulated over panels.
  Tensor dq = at::zeros({d.B, d.HV, d.T, d.K}, opts), dk = at::zeros({d.B, d.HV, d.T, d.K}, opts);
  Tensor dv = at::empty({d.B, d.HV, d.T, d.V}, opts), dinit = at::empty({d.N, d.HV, d.K, d.V}, opts);
  Tensor dbeta = at::zeros({d.B, d.HV, d.T}, opts);
  Tensor dg = !d.has_gate ? Tensor()
             : d.per_key_gate ? at::zeros({d.B, d.HV, d.T, d.K}, opts) : at::zeros({d.B, d.HV, d.T}, opts);
  // Per part: the kernel's workspace, then the state gradient of each panel (carried from chunk to chunk).
  const int64_t ws_size = kernels::delta_rule_backward_workspace(d.K),
                ds_size = kernels::delta_rule_state_gradient_size(d.K);
  const int64_t tasks = d.N * d.HV, parts = parts_for(tasks), part_size = ws_size + d.panels() * ds_size;
  Tensor ws = at::empty({parts, part_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_rule_backward", [&] {
    using T = scalar_t;
    const DeltaInputs<T> in(d, q, k, v, g, beta, scale, initial_state, l2norm);
    if (present(grad_o)) go = head_major_copy<T>(*grad_o, d.V);
    const T *gop = go.defined() ? go.data_ptr<T>() : nullptr, *glp = gl.defined() ? gl.data_ptr<T>() : nullptr;
    T *ckp = ck.data_ptr<T>(), *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>(),
      *dip = dinit.data_ptr<T>(), *dbp = dbeta.data_ptr<T>(), *dgp = dg.defined() ? dg.data_ptr<T>() : nullptr,
      *wsp = ws.data_ptr<T>();
    const int64_t gw = d.gate_width();
    parallel_parts(tasks, parts, [&](int64_t task, int64_t part) {
      const int64_t n = task / d.HV, hv = task % d.HV;
      const Sequence& s = seqs[n];
      const int64_t r = in.step0(s, hv, d.HV);
      T* const work = wsp + part * part_size;
      // Chunk by chunk, last to first, every panel of the head in turn (in panel order, so that each
      // gradient adds up the panels in the same order for any thread count): the chunk's dq and dk stay in
      // cache across the panels.
      int64_t end = s.end - s.start;
      do {
        const int64_t begin = kernels::delta_chunk_begin(s.start, end);
        for (int64_t c = 0; c < d.panels(); ++c) {
          const int64_t vo = in.value_offset(s, hv, c), so = in.state_offset(n, hv, c);
          const kernels::DeltaGrads<T> grads{dqp + r * d.K, dkp + r * d.K, d.K, dvp + vo, d.V,
                                             dgp ? dgp + r * gw : nullptr, gw, dbp + r, 1, dip + so};
          kernels::delta_rule_backward<T>(in.panel(s, hv, c), in.states(n, s, hv, c, ckp), gop ? gop + vo : nullptr,
                                          d.V, glp ? glp + so : nullptr, grads, work + ws_size + c * ds_size,
                                          begin, end, work);
        }
        end = begin;
      } while (end > 0);
    });
  });
  // The value heads of a q/k head's group add up, in order: (batch, H, group, T, K) -> (batch, T, H, K).
  const auto group_sum = [&](const Tensor& t) {
    if (d.group() == 1) return time_major(t);
    return time_major(
        sum_row_ranges(t.view({d.B * d.H, d.group(), d.T * d.K}), {0, d.group()}).view({d.B, d.H, d.T, d.K}));
  };
  Tensor gq, gk;
  if (mask[0]) gq = l2norm ? l2norm_backward(group_sum(dq), q) : group_sum(dq);
  if (mask[1]) gk = l2norm ? l2norm_backward(group_sum(dk), k) : group_sum(dk);
  return {gq, gk, mask[2] ? time_major(dv) : Tensor(), mask[3] ? time_major(dg) : Tensor(),
          mask[4] ? time_major(dbeta) : Tensor(), mask[5] ? dinit : Tensor()};
}

std::tuple<Tensor, Tensor> gated_delta_rule_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                                const optional<Tensor>& initial_state, bool l2norm,
                                                const optional<Tensor>& cu_seqlens) {
  auto r = forward(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor> gated_delta_rule_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                                const optional<Tensor>& g, const Tensor& beta,
                                                                optional<double> scale,
                                                                const optional<Tensor>& initial_state, bool l2norm,
                                                                const optional<Tensor>& cu_seqlens) {
  return forward(q, k, v, g, beta, scale, initial_state, l2norm, cu_seqlens, /*save=*/true);
}

}  // namespace

// CPU only: Meta tensors (and torch.compile's fake tensors) go to ops/meta/gated_delta_rule.cpp.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) {
  m.impl("gated_delta_rule", TORCH_FN(gated_delta_rule_cpu));
  m.impl("_gated_delta_rule_forward", TORCH_FN(gated_delta_rule_forward_cpu));
  m.impl("_gated_delta_rule_backward", TORCH_FN(backward));
}

}  // namespace cpu
}  // namespace torch_rnn_ext
