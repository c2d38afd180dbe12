// CPU kernels of the gated_delta_rule ops: validation, and the panel loops of kernels/delta_rule.h spread
// with at::parallel_for over (sequence, q/k head, group of panels of state columns) in forward and over
// (sequence, q/k head) in backward, whose value heads and panels add into the head's gradients in order.
// Every output element is written by one task, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// The L2 norm's backward of one row, in place: dy becomes dx = r (dy - y (dy . y)), from the norm's output
// y = x r and r, the row's l2norm_rstd.
template <typename T>
void l2norm_backward_row(const T* y, T r, T* dy, int64_t n) {
  T dot = 0;
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
  for (int64_t i = 0; i < n; ++i) dy[i] = r * (dy[i] - y[i] * dot);
}

// Offset of step t of sequence s, head `head` of `heads`, in a (batch, T, heads, X) tensor.
inline int64_t step_offset(const DeltaGeometry& d, const Sequence& s, int64_t t, int64_t head, int64_t heads,
                           int64_t X) {
  return ((s.b * d.T + s.start + t) * heads + head) * X;
}

// A task's buffer for one chunk (values of the call's dtype): q and k (kChunk K values each), the decay
// (kChunk gate_width values), and the L2 norm's 1 / norm of each row of q and of k (kChunk values each).
int64_t chunk_buffer_size(const DeltaGeometry& d) { return kChunk * (2 * d.K + d.gate_width() + 2); }

// One call's inputs (contiguous, kept alive here) as raw pointers, taken before any parallel region, and
// the kernel's view of one chunk of them. The kernel reads q, k, v and beta where they are (time-major):
// a task walks one chunk (at most kChunk steps) of a head through all of its panels before the next, so
// a chunk's rows are read from cache and its pages stay in the TLB. A chunk's L2-normalised q and k and
// its exp(g) go to the task's buffers first (no normalised copy of the whole input).
template <typename T>
struct DeltaCall {
  DeltaGeometry d;
  Tensor tq, tk, tv, tg, tbeta, tinit;
  const T *q, *k, *v, *g, *beta, *init;
  T scale;
  bool l2norm;

  DeltaCall(const DeltaGeometry& geo, const Tensor& q_, const Tensor& k_, const Tensor& v_, const optional<Tensor>& g_,
            const Tensor& beta_, optional<double> scale_, const optional<Tensor>& initial_state, bool l2norm_)
      : d(geo),
        tq(q_.contiguous()),
        tk(k_.contiguous()),
        tv(v_.contiguous()),
        tg(present(g_) ? g_->contiguous() : Tensor()),
        tbeta(beta_.contiguous()),
        tinit(present(initial_state) ? initial_state->contiguous() : Tensor()),
        q(tq.data_ptr<T>()),
        k(tk.data_ptr<T>()),
        v(tv.data_ptr<T>()),
        g(tg.defined() ? tg.data_ptr<T>() : nullptr),
        beta(tbeta.data_ptr<T>()),
        init(tinit.defined() ? tinit.data_ptr<T>() : nullptr),
        scale(static_cast<T>(scale_of(scale_, geo))),
        l2norm(l2norm_) {}

  int64_t first_column(int64_t panel) const { return panel * kDeltaWidth; }
  int64_t width(int64_t panel) const { return std::min(kDeltaWidth, d.V - first_column(panel)); }

  // Where chunk_buffer_size's buffer keeps the rows' 1 / norm of q and of k.
  static T* rstd_q(const DeltaGeometry& d, T* buf) { return buf + kChunk * (2 * d.K + d.gate_width()); }
  static T* rstd_k(const DeltaGeometry& d, T* buf) { return rstd_q(d, buf) + kChunk; }

  // Steps [c0, c1) of sequence s: q and k of q/k head h (L2-normalised, with their rows' 1 / norm) into buf,
  // or where they are without the norm. Returns {q, k, their step stride}.
  std::tuple<const T*, const T*, int64_t> chunk_qk(const Sequence& s, int64_t h, int64_t c0, int64_t c1, T* buf) const {
    const int64_t off = step_offset(d, s, c0, h, d.H, d.K);
    if (!l2norm) return {q + off, k + off, d.H * d.K};
    T *qb = buf, *kb = buf + kChunk * d.K;
    constexpr int64_t kAhead = 4, kLine = 64 / sizeof(T);
    for (int64_t t = 0; t < c1 - c0; ++t) {
      const T *qr = q + off + t * d.H * d.K, *kr = k + off + t * d.H * d.K;
      if (t + kAhead < c1 - c0) {  // rows 4 KiB or more apart: ask for later rows while this one is summed
        for (int64_t i = 0; i < d.K; i += kLine) {
          __builtin_prefetch(qr + kAhead * d.H * d.K + i);
          __builtin_prefetch(kr + kAhead * d.H * d.K + i);
        }
      }
      const T rq = l2norm_rstd(qr, d.K), rk = l2norm_rstd(kr, d.K);
      rstd_q(d, buf)[t] = rq;
      rstd_k(d, buf)[t] = rk;
      for (int64_t i = 0; i < d.K; ++i) {
        qb[t * d.K + i] = qr[i] * rq;
        kb[t * d.K + i] = kr[i] * rk;
      }
    }
    return {qb, kb, d.K};
  }

  // exp(g) of value head hv over steps [c0, c1) into buf (after the chunk's q and k); nullptr without gate.
  const T* chunk_decay(const Sequence& s, int64_t hv, int64_t c0, int64_t c1, T* buf) const {
    if (g == nullptr) return nullptr;
    const int64_t gw = d.gate_width();
    const T* src = g + step_offset(d, s, c0, hv, d.HV, gw);
    T* out = buf + 2 * kChunk * d.K;
    for (int64_t t = 0; t < c1 - c0; ++t)
      for (int64_t i = 0; i < gw; ++i) out[t * gw + i] = std::exp(src[t * d.HV * gw + i]);
    return out;
  }

  // Panel c of value head hv over steps [c0, c1) of sequence s, with the chunk's q, k and decay.
  kernels::DeltaPanel<T> panel(const Sequence& s, int64_t hv, int64_t c, int64_t c0, int64_t c1,
                               const std::tuple<const T*, const T*, int64_t>& qk, const T* decay) const {
    return {c1 - c0,
            s.start + c0,
            d.K,
            width(c),
            std::get<0>(qk),
            std::get<1>(qk),
            std::get<2>(qk),
            v + value_offset(s, hv, c0) + first_column(c),
            d.HV * d.V,
            decay,
            d.gate_width(),
            d.per_key_gate,
            beta + step_offset(d, s, c0, hv, d.HV, 1),
            d.HV,
            scale};
  }
  // Offset of step c0 of sequence s, value head hv, in a (batch, T, HV, V) tensor (v, o and their gradients).
  int64_t value_offset(const Sequence& s, int64_t hv, int64_t c0) const {
    return step_offset(d, s, c0, hv, d.HV, d.V);
  }
  // Offset of sequence n's head hv, panel c, in an (N, HV, K, V) state.
  int64_t state_offset(int64_t n, int64_t hv, int64_t c) const { return (n * d.HV + hv) * d.K * d.V + first_column(c); }
  // Offset of batch row b's head hv, panel c, chunk 0, in the (batch, chunks, HV, K, V) checkpoints.
  int64_t checkpoint_offset(int64_t b, int64_t hv, int64_t c) const {
    return (b * d.chunks() * d.HV + hv) * d.K * d.V + first_column(c);
  }
  // init: the state before the chunk (the initial state, or where the chunk before left it).
  kernels::DeltaStates<T> states(const T* init_, const Sequence& s, int64_t hv, int64_t c, T* ckpt) const {
    return {init_, d.V, ckpt ? ckpt + checkpoint_offset(s.b, hv, c) : nullptr, d.HV * d.K * d.V};
  }
};

// Whether large outputs are advised as huge pages: yes unless TORCH_RNN_EXT_HUGE_PAGES=0 (read per call, and
// only for outputs of 2 MiB and more).
bool huge_pages_wanted() {
  const char* v = std::getenv("TORCH_RNN_EXT_HUGE_PAGES");
  return v == nullptr || std::string(v) != "0";
}

// A new tensor for a large output the kernels write first (the state checkpoints, o, the gradients), its
// memory advised to the OS kernel as huge pages (Linux, transparent huge pages in "madvise" or "always"
// mode), as torch's own allocator does with THP_MEM_ALLOC_ENABLE=1: at T = 4096 these are 160 MiB per
// training step, and faulting them in 4 KiB at a time took a fifth of forward+backward. Only the 2
// MiB-aligned middle of the buffer is advised; a failure or a system without them leaves ordinary pages.
// zero: filled with zeros (after the advice, so that the fill gets the huge pages).
Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts, bool zero = false) {
  Tensor t = at::empty(sizes, opts);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr()), end = begin + t.nbytes();
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = end & ~(kHuge - 1);
  if (hi > lo && huge_pages_wanted()) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  if (zero) t.zero_();
  return t;
}

// Tasks are run in at most one range per thread (parallel_parts), each with its own workspace row.
int64_t parts_for(int64_t tasks) { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks)); }

// The chunks of sequence s as [c0, c1) in its steps, cut at global multiples of kChunk (where the forward
// saves states): f(c0, c1) for each, first to last (forward) or last to first (backward).
inline int64_t chunk_origin(const Sequence& s, int64_t t) {  // of the global chunk holding step t (may be < 0)
  return (s.start + t) / kChunk * kChunk - s.start;
}
template <typename F>
void for_each_chunk(const Sequence& s, const F& f) {
  for (int64_t c0 = 0; c0 < s.end - s.start;) {
    const int64_t c1 = std::min(s.end - s.start, chunk_origin(s, c0) + kChunk);
    f(c0, c1);
    c0 = c1;
  }
}
template <typename F>
void for_each_chunk_reversed(const Sequence& s, const F& f) {
  for (int64_t c1 = s.end - s.start; c1 > 0;) {
    const int64_t c0 = std::max<int64_t>(0, chunk_origin(s, c1 - 1));
    f(c0, c1);
    c1 = c0;
  }
}

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const optional<Tensor>& g, const Tensor& beta, optional<double> scale,
                                           const optional<Tensor>& initial_state, bool l2norm,
                                           const optional<Tensor>& cu_seqlens, bool save) {
  const DeltaGeometry d = check_cpu(q, k, v, g, beta, initial_state, cu_seqlens);
  const std::vector<Sequence> seqs = sequences_of(d, cu_seqlens);
  const auto opts = q.options();
  Tensor o = new_output({d.B, d.T, d.HV, d.V}, opts);
  Tensor last = at::empty({d.N, d.HV, d.K, d.V}, opts);
  Tensor ckpt = save ? new_output({d.B, d.chunks(), d.HV, d.K, d.V}, opts) : Tensor();
  // Tasks: (sequence, q/k head, group of panels), the panels cut into as many groups as it takes to give
  // every thread four tasks (which panels share a task does not change any result). A task normalises a
  // chunk's q and k once for the value heads of its q/k head.
  const int64_t heads = d.N * d.H, threads = at::get_num_threads();
  const int64_t groups =
      std::max<int64_t>(1, std::min(d.panels(), (4 * threads + heads - 1) / std::max<int64_t>(1, heads)));
  const int64_t tasks = heads * groups, parts = parts_for(tasks);
  // Per part: the kernel's workspace, the chunk's buffers, then the running decay factor of each panel of the
  // task (carried from chunk to chunk with the panel's rows in `last`, so that where a sequence's decays are
  // multiplied into its state depends on its own steps only, not on where the chunks fall).
  const int64_t ws_size = kernels::delta_rule_forward_workspace(d.K),
                part_size = ws_size + chunk_buffer_size(d) + d.group() * d.panels();
  Tensor ws = at::empty({parts, part_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_rule", [&] {
    using T = scalar_t;
    const DeltaCall<T> in(d, q, k, v, g, beta, scale, initial_state, l2norm);
    T *op = o.data_ptr<T>(), *lp = last.data_ptr<T>(), *cp = save ? ckpt.data_ptr<T>() : nullptr,
      *wsp = ws.data_ptr<T>();
    parallel_parts(tasks, parts, [&](int64_t task, int64_t part) {
      const int64_t n = task / (d.H * groups), h = (task / groups) % d.H, grp = task % groups;
      const int64_t c_begin = d.panels() * grp / groups, c_end = d.panels() * (grp + 1) / groups;
      const Sequence& s = seqs[n];
      T *work = wsp + part * part_size, *buf = work + ws_size, *factors = buf + chunk_buffer_size(d);
      std::fill(factors, factors + d.group() * d.panels(), T(1));
      // Each panel's state is carried from chunk to chunk in `last` (as rows and a factor).
      for_each_chunk(s, [&](int64_t c0, int64_t c1) {
        const auto qk = in.chunk_qk(s, h, c0, c1, buf);
        for (int64_t hv = h * d.group(); hv < (h + 1) * d.group(); ++hv) {
          const T* decay = in.chunk_decay(s, hv, c0, c1, buf);
          for (int64_t c = c_begin; c < c_end; ++c) {
            T* state = lp + in.state_offset(n, hv, c);
            const T* before = c0 > 0 ? state : in.init ? in.init + in.state_offset(n, hv, c) : nullptr;
            kernels::DeltaStates<T> states = in.states(before, s, hv, c, cp);
            states.factor = factors + (hv - h * d.group()) * d.panels() + c;
            states.settle = c1 == s.end - s.start;
            kernels::delta_rule_forward<T>(in.panel(s, hv, c, c0, c1, qk, decay), states, state,
                                           op + in.value_offset(s, hv, c0) + in.first_column(c), d.HV * d.V, work);
          }
        }
      });
    });
  });
  return {o, last, ckpt};
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
  // grad_o is read where it is, with its strides: the gradient of o.sum() is one value expanded (strides 0),
  // which a contiguous copy would write out in full.
  const Tensor go = present(grad_o) ? *grad_o : Tensor();
  const Tensor gl = present(grad_final_state) ? grad_final_state->contiguous() : Tensor();
  const Tensor ck = checkpoints.contiguous();
  // Gradients in the layout they are returned in, written where they go. dq and dk are accumulated by the
  // task of their q/k head: its group's value heads in order, each over its panels in order.
  Tensor dq = new_output({d.B, d.T, d.H, d.K}, opts, true), dk = new_output({d.B, d.T, d.H, d.K}, opts, true);
  Tensor dv = new_output({d.B, d.T, d.HV, d.V}, opts), dinit = at::empty({d.N, d.HV, d.K, d.V}, opts);
  Tensor dbeta = at::zeros({d.B, d.T, d.HV}, opts);
  Tensor dg = !d.has_gate ? Tensor()
             : d.per_key_gate ? new_output({d.B, d.T, d.HV, d.K}, opts, true) : at::zeros({d.B, d.T, d.HV}, opts);
  // Per part: the kernel's workspace, the chunk's buffers, then the state gradient of each panel of the
  // group's value heads (carried from chunk to chunk).
  const int64_t ws_size = kernels::delta_rule_backward_workspace(d.K),
                buf_size = chunk_buffer_size(d),
                ds_size = kernels::delta_rule_state_gradient_size(d.K);
  const int64_t tasks = d.N * d.H, parts = parts_for(tasks),
                part_size = ws_size + buf_size + d.group() * d.panels() * ds_size;
  Tensor ws = at::empty({parts, part_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_rule_backward", [&] {
    using T = scalar_t;
    const DeltaCall<T> in(d, q, k, v, g, beta, scale, initial_state, l2norm);
    const T *gop = go.defined() ? go.data_ptr<T>() : nullptr, *glp = gl.defined() ? gl.data_ptr<T>() : nullptr;
    // Offset of step c0 of sequence s, value head hv, column col in grad_o.
    const std::array<int64_t, 4> gs =
        go.defined() ? std::array<int64_t, 4>{go.stride(0), go.stride(1), go.stride(2), go.stride(3)}
                     : std::array<int64_t, 4>{0, 0, 0, 0};
    const auto go_offset = [&](const Sequence& s, int64_t hv, int64_t c0, int64_t col) {
      return s.b * gs[0] + (s.start + c0) * gs[1] + hv * gs[2] + col * gs[3];
    };
    T *ckp = ck.data_ptr<T>(), *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>(),
      *dip = dinit.data_ptr<T>(), *dbp = dbeta.data_ptr<T>(), *dgp = dg.defined() ? dg.data_ptr<T>() : nullptr,
      *wsp = ws.data_ptr<T>();
    const int64_t gw = d.gate_width();
    parallel_parts(tasks, parts, [&](int64_t task, int64_t part) {
      const int64_t n = task / d.H, h = task % d.H;
      const Sequence& s = seqs[n];
      T *work = wsp + part * part_size, *buf = work + ws_size, *dS = buf + buf_size;
      // Chunk by chunk, last to first, every panel of the group's value heads in turn (in order, so that
      // each gradient adds up the same way for any thread count): the chunk's dq and dk stay in cache, and
      // are final when the chunk is done (the L2 norm's backward then runs on them in place).
      for_each_chunk_reversed(s, [&](int64_t c0, int64_t c1) {
        const auto qk = in.chunk_qk(s, h, c0, c1, buf);
        const int64_t qk0 = step_offset(d, s, c0, h, d.H, d.K);
        for (int64_t j = 0; j < d.group(); ++j) {
          const int64_t hv = h * d.group() + j, vo = in.value_offset(s, hv, c0);
          const T* decay = in.chunk_decay(s, hv, c0, c1, buf);
          for (int64_t c = 0; c < d.panels(); ++c) {
            const int64_t so = in.state_offset(n, hv, c), col = in.first_column(c);
            const kernels::DeltaGrads<T> grads{dqp + qk0,
                                               dkp + qk0,
                                               d.H * d.K,
                                               dvp + vo + col,
                                               d.HV * d.V,
                                               dgp ? dgp + step_offset(d, s, c0, hv, d.HV, gw) : nullptr,
                                               d.HV * gw,
                                               dbp + step_offset(d, s, c0, hv, d.HV, 1),
                                               d.HV,
                                               dip + so};
            kernels::DeltaStates<T> states = in.states(in.init ? in.init + so : nullptr, s, hv, c, ckp);
            // The checkpoint the next call loads: the next panel's of this chunk, else the first's of the
            // chunk before (none where that one starts the sequence: it loads the initial state).
            const bool last_panel = c + 1 == d.panels() && j + 1 == d.group();
            const int64_t next_c0 = last_panel ? chunk_origin(s, c0 - 1) : c0;
            if (next_c0 > 0)
              states.next = ckp + (s.start + next_c0) / kChunk * d.HV * d.K * d.V +
                            (last_panel ? in.checkpoint_offset(s.b, h * d.group(), 0)
                             : c + 1 < d.panels() ? in.checkpoint_offset(s.b, hv, c + 1)
                                                  : in.checkpoint_offset(s.b, hv + 1, 0));
            kernels::delta_rule_backward<T>(
                in.panel(s, hv, c, c0, c1, qk, decay), states,
                gop ? gop + go_offset(s, hv, c0, col) : nullptr, gs[1], gs[3],
                glp ? glp + so : nullptr, c1 == s.end - s.start, c0 == 0,
                grads, dS + (j * d.panels() + c) * ds_size, work);
          }
        }
        if (l2norm) {  // the chunk's normalised rows are still in buf
          for (int64_t t = 0; t < c1 - c0; ++t) {
            const int64_t r = qk0 + t * d.H * d.K;
            l2norm_backward_row(std::get<0>(qk) + t * d.K, DeltaCall<T>::rstd_q(d, buf)[t], dqp + r, d.K);
            l2norm_backward_row(std::get<1>(qk) + t * d.K, DeltaCall<T>::rstd_k(d, buf)[t], dkp + r, d.K);
          }
        }
      });
    });
  });
  return {mask[0] ? dq : Tensor(), mask[1] ? dk : Tensor(), mask[2] ? dv : Tensor(), mask[3] ? dg : Tensor(),
          mask[4] ? dbeta : Tensor(), mask[5] ? dinit : Tensor()};
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
