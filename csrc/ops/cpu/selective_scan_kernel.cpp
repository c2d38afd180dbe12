// CPU kernels of the selective_scan ops: validation, layout, and the per-channel loops of
// kernels/selective_scan.h spread over (batch, channel) with at::parallel_for.
#include <torch/library.h>

#include <array>
#include <cstring>
#include <vector>

#include "checks.h"
#include "kernels/scans.h"
#include "ops/cpu/scan_common.h"
#include "ops/scan_shapes.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

using at::Tensor;
using kernels::kChunk;

using Operand = torch_rnn_ext::Operand<int64_t>;
using ScanGeometry = ScanShape<int64_t>;

// B or C laid out for the kernel: constant (dim, N), or varying (batch, G, L, N), transposed from
// (batch, G, N, L) by a loop here (ATen's copy costs a short scan more than the loop: 1-2 us each). At
// L = 1 (a decode step) both layouts are the same memory.
template <typename T>
Tensor operand_layout(const Tensor& t, const ScanGeometry& g, const Operand& o) {
  if (!o.varying || g.L == 1) return t.contiguous();
  const Tensor src = t.contiguous();
  Tensor dst = at::empty({g.batch, o.groups, g.L, g.N}, t.options());
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  const int64_t L = g.L, N = g.N;
  for (int64_t r = 0; r < g.batch * o.groups; ++r, s += N * L, d += L * N)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t k = 0; k < N; ++k) d[i * N + k] = s[k * L + i];
  return dst;
}

// One call's tensors in the kernel's layout (kept alive here), and raw pointers into them, taken
// before any parallel region.
template <typename T>
struct ScanInputs {
  Tensor tu, tdelta, tA, tB, tC, tD, tz, tbias;
  ScanGeometry g;
  bool softplus;
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;

  ScanInputs(const ScanGeometry& geo, const Tensor& u_, const Tensor& delta_, const Tensor& A_,
             const Tensor& B_, const Tensor& C_, const optional<Tensor>& D_, const optional<Tensor>& z_,
             const optional<Tensor>& bias_, bool softplus_)
      : tu(u_.contiguous()),
        tdelta(delta_.contiguous()),
        tA(A_.contiguous()),
        tB(operand_layout<T>(B_, geo, geo.B)),
        tC(operand_layout<T>(C_, geo, geo.C)),
        tD(present(D_) ? D_->contiguous() : Tensor()),
        tz(present(z_) ? z_->contiguous() : Tensor()),
        tbias(present(bias_) ? bias_->contiguous() : Tensor()),
        g(geo),
        softplus(softplus_),
        u(tu.data_ptr<T>()),
        delta(tdelta.data_ptr<T>()),
        A(tA.data_ptr<T>()),
        B(tB.data_ptr<T>()),
        C(tC.data_ptr<T>()),
        D(tD.defined() ? tD.data_ptr<T>() : nullptr),
        z(tz.defined() ? tz.data_ptr<T>() : nullptr),
        bias(tbias.defined() ? tbias.data_ptr<T>() : nullptr) {}

  // Where operand o (laid out by operand_layout) starts for channel d of batch row b.
  const T* operand(const T* base, const Operand& o, int64_t b, int64_t d) const {
    if (!o.varying) return base + d * g.N;
    return base + (b * o.groups + d / o.per_group) * g.L * g.N;
  }

  kernels::ScanChannel<T> channel(int64_t b, int64_t d) const {
    const int64_t row = (b * g.dim + d) * g.L;
    return {g.L,
            g.N,
            u + row,
            delta + row,
            z ? z + row : nullptr,
            A + d * g.N,
            operand(B, g.B, b, d),
            g.B.varying ? g.N : 0,
            operand(C, g.C, b, d),
            g.C.varying ? g.N : 0,
            D ? D[d] : T(0),
            bias ? bias[d] : T(0),
            softplus,
            D != nullptr};
  }

  // The channels [d0, d1) of batch row b as one block of a short scan (L <= kChunk), as channel() lays out
  // each of them.
  kernels::ScanBlock<T> block(int64_t b, int64_t d0, int64_t d1) const {
    const int64_t row = (b * g.dim + d0) * g.L;
    return {d1 - d0,
            g.N,
            g.L,
            u + row,
            delta + row,
            z ? z + row : nullptr,
            A + d0 * g.N,
            operand(B, g.B, b, d0),
            g.B.varying ? 0 : g.N,
            g.B.varying ? g.N : 0,
            operand(C, g.C, b, d0),
            g.C.varying ? 0 : g.N,
            g.C.varying ? g.N : 0,
            D ? D + d0 : nullptr,
            bias ? bias + d0 : nullptr,
            softplus};
  }
};

// Tasks: runs of consecutive channels that share their B group and their C group, at most max_len (by
// default kTaskChannels) long. A backward task accumulates the gradients of varying B and C for its channels
// in order; a short scan (L <= kChunk: a streaming step, a chunk of a prefill) runs a task's channels as one
// block, of up to kShortTaskSteps channel-steps (at least kTaskChannels channels): a decode step's per-block
// work (its loops' set-up, the parallel task) then spreads over more channels.
constexpr int64_t kTaskChannels = 32;
constexpr int64_t kShortTaskSteps = 256;

std::vector<std::pair<int64_t, int64_t>> channel_tasks(const ScanGeometry& g, int64_t max_len = kTaskChannels) {
  std::vector<int64_t> cuts;  // the channels where a group of B or of C starts
  const auto next_group = [](int64_t d, int64_t per_group) { return (d / per_group + 1) * per_group; };
  for (int64_t d = 0; d < g.dim; d = std::min(next_group(d, g.B.per_group), next_group(d, g.C.per_group)))
    cuts.push_back(d);
  cuts.push_back(g.dim);
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const int64_t len = cuts[i + 1] - cuts[i], pieces = (len + max_len - 1) / max_len;
    for (int64_t p = 0; p < pieces; ++p)
      tasks.emplace_back(cuts[i] + len * p / pieces, cuts[i] + len * (p + 1) / pieces);
  }
  return tasks;
}

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& u, const Tensor& delta, const Tensor& A,
                                           const Tensor& B, const Tensor& C, const optional<Tensor>& D,
                                           const optional<Tensor>& z, const optional<Tensor>& delta_bias,
                                           bool delta_softplus, const optional<Tensor>& initial,
                                           bool save) {
  const ScanGeometry g = check_selective_scan<int64_t>(at::kCPU, u, delta, A, B, C, D, z, delta_bias, initial);
  // The state before (h0, the given one read in place) and after (h). A short scan (one chunk: a streaming
  // step, a piece of a chunked prefill) reads h0 and writes h; a longer one copies each channel's row of h0
  // into h and updates it there.
  const bool short_scan = g.L >= 1 && g.L <= kChunk;
  const Tensor h0 = present(initial) ? initial->contiguous() : at::zeros({g.batch, g.dim, g.N}, u.options());
  Tensor h = at::empty({g.batch, g.dim, g.N}, u.options());
  Tensor out = at::empty({g.batch, g.dim, g.L}, u.options());
  const int64_t chunks = kernels::num_chunks(g.L);
  Tensor ckpt = save ? at::empty({g.batch, g.dim, chunks, g.N}, u.options()) : Tensor();
  if (save && short_scan) ckpt.view_as(h).copy_(h0);  // the state before the chunk, the one checkpoint
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan", [&] {
    const ScanInputs<scalar_t> in(g, u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    if (short_scan) {  // blocks of channels (kernels::selective_scan_block)
      const int64_t task_len = std::max(kTaskChannels, kShortTaskSteps / g.L);
      const auto blocks = channel_tasks(g, task_len);
      const int64_t nblocks = static_cast<int64_t>(blocks.size());
      // A step's state element costs about twice one of a longer scan (its exp is taken alone, and the state
      // goes through memory): weighted so, a Mamba-130M-sized step (1536 channels) runs on two threads.
      parallel_items(g.batch * nblocks, {task_len, g.N, std::max<int64_t>(2, g.L)}, [&](int64_t item) {
        const int64_t b = item / nblocks;
        const auto& blk = blocks[item % nblocks];
        const int64_t ch = b * g.dim + blk.first;
        kernels::selective_scan_block<scalar_t>(in.block(b, blk.first, blk.second), h0p + ch * g.N,
                                                hp + ch * g.N, op + ch * g.L);
      });
      return;
    }
    scalar_t* cp = save ? ckpt.data_ptr<scalar_t>() : nullptr;
    parallel_items(g.batch * g.dim, {g.L, g.N}, [&](int64_t ch) {
      std::memcpy(hp + ch * g.N, h0p + ch * g.N, sizeof(scalar_t) * g.N);
      kernels::selective_scan_forward<scalar_t>(in.channel(ch / g.dim, ch % g.dim), hp + ch * g.N,
                                                op + ch * g.L, cp ? cp + ch * chunks * g.N : nullptr);
    });
  });
  return {out, h, ckpt};
}


// Partial gradients of B or C: per (batch, channel) rows (batch, dim, N) when constant, per (batch,
// task) sequences (batch, tasks, L, N) when varying.
struct OperandGrad {
  Tensor partial;
  int64_t step = 0;
  template <typename T>
  static T* at(T* base, const Operand& o, const ScanGeometry& g, int64_t b, int64_t d, int64_t task,
               int64_t tasks) {
    if (!o.varying) return base + (b * g.dim + d) * g.N;
    return base + (b * tasks + task) * g.L * g.N;
  }
};

OperandGrad operand_grad(const Operand& o, const ScanGeometry& g, int64_t tasks, const at::TensorOptions& opts) {
  if (!o.varying) return {at::zeros({g.batch, g.dim, g.N}, opts), 0};
  return {at::zeros({g.batch, tasks, g.L, g.N}, opts), g.N};
}

// The gradient of B or C in its own shape, from the partials.
Tensor finish_operand_grad(const OperandGrad& pg, const Tensor& like, const Operand& o, const ScanGeometry& g,
                           const std::vector<std::pair<int64_t, int64_t>>& tasks) {
  if (!o.varying) return sum_leading(pg.partial);
  std::vector<int64_t> bounds{0};
  for (int64_t grp = 0; grp < o.groups; ++grp) {
    int64_t k = bounds.back();
    while (k < static_cast<int64_t>(tasks.size()) && tasks[k].first / o.per_group == grp) ++k;
    bounds.push_back(k);
  }
  Tensor summed = sum_row_ranges(pg.partial.view({g.batch, static_cast<int64_t>(tasks.size()), g.L * g.N}), bounds);
  return summed.view({g.batch, o.groups, g.L, g.N}).transpose(2, 3).contiguous().view(like.sizes());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
    const optional<Tensor>& grad_out, const optional<Tensor>& grad_last_state, const Tensor& u,
    const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C, const optional<Tensor>& D,
    const optional<Tensor>& z, const optional<Tensor>& delta_bias, bool delta_softplus,
    const optional<Tensor>& initial, const Tensor& checkpoints, std::array<bool, 9> mask) {
  const ScanGeometry g = check_selective_scan<int64_t>(at::kCPU, u, delta, A, B, C, D, z, delta_bias, initial);
  check_selective_scan_backward_args<int64_t>(g, u, checkpoints, grad_out, grad_last_state);
  const int64_t chunks = kernels::num_chunks(g.L);
  const auto opts = u.options();
  const auto tasks = channel_tasks(g);
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  const Tensor go = present(grad_out) ? grad_out->contiguous() : Tensor();
  const Tensor ck = checkpoints.contiguous();
  Tensor gh = present(grad_last_state) ? grad_last_state->contiguous().clone()
                                       : at::zeros({g.batch, g.dim, g.N}, opts);
  Tensor gu = at::empty({g.batch, g.dim, g.L}, opts), gdelta = at::empty({g.batch, g.dim, g.L}, opts);
  Tensor gz = present(z) ? at::empty({g.batch, g.dim, g.L}, opts) : Tensor();
  Tensor gA = at::zeros({g.batch, g.dim, g.N}, opts);
  Tensor gD = at::zeros({g.batch, g.dim}, opts), gbias = at::zeros({g.batch, g.dim}, opts);
  const OperandGrad gB = operand_grad(g.B, g, ntasks, opts), gC = operand_grad(g.C, g, ntasks, opts);
  const int64_t ws_size = kernels::selective_scan_backward_workspace(g.N);
  Tensor ws = at::empty({g.batch * ntasks, ws_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward", [&] {
    using T = scalar_t;
    const ScanInputs<T> in(g, u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    const T* gop = go.defined() ? go.data_ptr<T>() : nullptr;
    const T* ckp = ck.data_ptr<T>();
    T *gup = gu.data_ptr<T>(), *gdp = gdelta.data_ptr<T>(), *gzp = gz.defined() ? gz.data_ptr<T>() : nullptr,
      *gAp = gA.data_ptr<T>(), *gBp = gB.partial.data_ptr<T>(), *gCp = gC.partial.data_ptr<T>(),
      *gDp = gD.data_ptr<T>(), *gbp = gbias.data_ptr<T>(), *ghp = gh.data_ptr<T>(), *wsp = ws.data_ptr<T>();
    parallel_items(g.batch * ntasks, {kTaskChannels, g.L, g.N}, [&](int64_t item) {
      const int64_t b = item / ntasks, task = item % ntasks;
      for (int64_t d = tasks[task].first; d < tasks[task].second; ++d) {
        const int64_t ch = b * g.dim + d;
        const kernels::ScanChannelGrads<T> grads{gup + ch * g.L,
                                                 gdp + ch * g.L,
                                                 gzp ? gzp + ch * g.L : nullptr,
                                                 gAp + ch * g.N,
                                                 OperandGrad::at(gBp, g.B, g, b, d, task, ntasks),
                                                 gB.step,
                                                 OperandGrad::at(gCp, g.C, g, b, d, task, ntasks),
                                                 gC.step,
                                                 gDp + ch,
                                                 gbp + ch};
        kernels::selective_scan_backward<T>(in.channel(b, d), ckp + ch * chunks * g.N,
                                            gop ? gop + ch * g.L : nullptr, ghp + ch * g.N, grads,
                                            wsp + item * ws_size);
      }
    });
  });
  return {mask[0] ? gu : Tensor(),
          mask[1] ? gdelta : Tensor(),
          mask[2] ? sum_leading(gA) : Tensor(),
          mask[3] ? finish_operand_grad(gB, B, g.B, g, tasks) : Tensor(),
          mask[4] ? finish_operand_grad(gC, C, g.C, g, tasks) : Tensor(),
          mask[5] && present(D) ? sum_leading(gD) : Tensor(),
          mask[6] ? gz : Tensor(),
          mask[7] && present(delta_bias) ? sum_leading(gbias) : Tensor(),
          mask[8] ? gh : Tensor()};
}

std::tuple<Tensor, Tensor> selective_scan_cpu(const Tensor& u, const Tensor& delta, const Tensor& A,
                                              const Tensor& B, const Tensor& C, const optional<Tensor>& D,
                                              const optional<Tensor>& z, const optional<Tensor>& delta_bias,
                                              bool delta_softplus, const optional<Tensor>& initial_state) {
  auto r = forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor> selective_scan_forward_cpu(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const optional<Tensor>& D, const optional<Tensor>& z, const optional<Tensor>& delta_bias,
    bool delta_softplus, const optional<Tensor>& initial_state) {
  return forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, /*save=*/true);
}

void register_kernels(torch::Library& m) {
  m.impl("selective_scan", TORCH_FN(selective_scan_cpu));
  m.impl("_selective_scan_forward", TORCH_FN(selective_scan_forward_cpu));
  m.impl("_selective_scan_backward", TORCH_FN(backward));
}

}  // namespace

// CPU only: Meta tensors (and torch.compile's fake tensors) go to ops/meta/selective_scan.cpp.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) { register_kernels(m); }

}  // namespace cpu
}  // namespace torch_rnn_ext
