// CPU kernels of the wkv4 ops: validation, layout, and the loops of kernels/wkv4.h spread over
// (batch, block of channels) with at::parallel_for.
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "checks.h"
#include "kernels/scans.h"
#include "ops/cpu/scan_common.h"
#include "ops/scan_shapes.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

using at::Tensor;
using kernels::kChunk;

// Channels per task: the inner loops run across a block's channels.
constexpr int64_t kBlock = kernels::kWkvMaxWidth;

struct WkvGeometry : WkvShape<int64_t> {
  int64_t blocks() const { return (C + kBlock - 1) / kBlock; }
};

WkvGeometry check_wkv4_cpu(const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v,
                           const optional<Tensor>& state) {
  WkvGeometry g;
  static_cast<WkvShape<int64_t>&>(g) = check_wkv4<int64_t>(at::kCPU, time_decay, time_first, k, v, state);
  return g;
}

// Pointers of one call, taken before any parallel region. Task i is block i % blocks of batch row
// i / blocks.
template <typename T>
struct WkvInputs {
  Tensor tdecay, tu, tk, tv;
  WkvGeometry g;
  const T *decay, *u, *k, *v;

  WkvInputs(const WkvGeometry& geo, const Tensor& time_decay, const Tensor& time_first, const Tensor& k_,
            const Tensor& v_)
      : tdecay(time_decay.contiguous()),
        tu(time_first.contiguous()),
        tk(k_.contiguous()),
        tv(v_.contiguous()),
        g(geo),
        decay(tdecay.data_ptr<T>()),
        u(tu.data_ptr<T>()),
        k(tk.data_ptr<T>()),
        v(tv.data_ptr<T>()) {}

  int64_t batch_of(int64_t task) const { return task / g.blocks(); }
  int64_t first_channel(int64_t task) const { return (task % g.blocks()) * kBlock; }
  // Offset of the task's first element in a (batch, rows, C) tensor.
  int64_t offset(int64_t task, int64_t rows) const {
    return batch_of(task) * rows * g.C + first_channel(task);
  }
  kernels::WkvBlock<T> block(int64_t task) const {
    const int64_t c0 = first_channel(task), off = offset(task, g.T);
    return {g.T, std::min(kBlock, g.C - c0), g.C, decay + c0, u + c0, k + off, v + off};
  }
  // The (aa, bb, pp) rows of a (batch, ..., 3, C) tensor at p for this task.
  static kernels::WkvState<T> rows(T* p, int64_t C) { return {p, p + C, p + 2 * C}; }
};

// The state the kernels update in place: the given one is copied in by each task (its block's rows, in
// cache right before its steps: a decode step is short enough that a clone of its own would show).
Tensor initial_state(const optional<Tensor>& state, const Tensor& k, const WkvGeometry& g) {
  if (present(state)) return at::empty({g.batch, 3, g.C}, k.options());
  Tensor s = at::zeros({g.batch, 3, g.C}, k.options());
  s.select(1, 2).fill_(kernels::kWkvEmptyPP);
  return s;
}

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& time_decay, const Tensor& time_first, const Tensor& k,
                                           const Tensor& v, const optional<Tensor>& state, bool save) {
  const WkvGeometry g = check_wkv4_cpu(time_decay, time_first, k, v, state);
  Tensor s = initial_state(state, k, g);
  const Tensor s0 = present(state) ? state->contiguous() : Tensor();
  Tensor y = at::empty({g.batch, g.T, g.C}, k.options());
  const int64_t chunks = kernels::num_chunks(g.T);
  Tensor ckpt = save ? at::empty({g.batch, chunks, 3, g.C}, k.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv4", [&] {
    using T = scalar_t;
    const WkvInputs<T> in(g, time_decay, time_first, k, v);
    T *sp = s.data_ptr<T>(), *yp = y.data_ptr<T>(), *cp = save ? ckpt.data_ptr<T>() : nullptr;
    const T* s0p = s0.defined() ? s0.data_ptr<T>() : nullptr;
    parallel_items(g.batch * g.blocks(), {g.T, kBlock}, [&](int64_t task) {
      if (s0p != nullptr) {
        const int64_t off = in.offset(task, 3), width = std::min(kBlock, g.C - in.first_channel(task));
        for (int64_t r = 0; r < 3; ++r) std::memcpy(sp + off + r * g.C, s0p + off + r * g.C, sizeof(T) * width);
      }
      const auto ck = cp ? in.rows(cp + in.offset(task, chunks * 3), g.C) : kernels::WkvState<T>{};
      kernels::wkv4_forward<T>(in.block(task), in.rows(sp + in.offset(task, 3), g.C),
                               yp + in.offset(task, g.T), ck, 3 * g.C);
    });
  });
  return {y, s, ckpt};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(
    const optional<Tensor>& grad_y, const optional<Tensor>& grad_new_state, const Tensor& time_decay,
    const Tensor& time_first, const Tensor& k, const Tensor& v, const optional<Tensor>& state,
    const Tensor& checkpoints, std::array<bool, 5> mask) {
  const WkvGeometry g = check_wkv4_cpu(time_decay, time_first, k, v, state);
  check_wkv4_backward_args<int64_t>(g, k, checkpoints, grad_y, grad_new_state);
  const int64_t chunks = kernels::num_chunks(g.T);
  const auto opts = k.options();
  const Tensor gy = present(grad_y) ? grad_y->contiguous() : Tensor();
  const Tensor ck = checkpoints.contiguous();
  Tensor gs = present(grad_new_state) ? grad_new_state->contiguous().clone() : at::zeros({g.batch, 3, g.C}, opts);
  Tensor gk = at::empty({g.batch, g.T, g.C}, opts), gv = at::empty({g.batch, g.T, g.C}, opts);
  Tensor gw = at::empty({g.batch, g.C}, opts), gu = at::empty({g.batch, g.C}, opts);  // every block writes its own
  const int64_t tasks = g.batch * g.blocks(), ws_size = kernels::wkv4_backward_workspace(kBlock);
  Tensor ws = at::empty({tasks, ws_size}, opts);
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv4_backward", [&] {
    using T = scalar_t;
    const WkvInputs<T> in(g, time_decay, time_first, k, v);
    const T* gyp = gy.defined() ? gy.data_ptr<T>() : nullptr;
    T *ckp = ck.data_ptr<T>(), *gsp = gs.data_ptr<T>(), *gkp = gk.data_ptr<T>(), *gvp = gv.data_ptr<T>(),
      *gwp = gw.data_ptr<T>(), *gup = gu.data_ptr<T>(), *wsp = ws.data_ptr<T>();
    parallel_items(tasks, {3, g.T, kBlock}, [&](int64_t task) {
      const int64_t off = in.offset(task, g.T), row = in.offset(task, 1);
      kernels::wkv4_backward<T>(in.block(task), in.rows(ckp + in.offset(task, chunks * 3), g.C), 3 * g.C,
                                gyp ? gyp + off : nullptr, in.rows(gsp + in.offset(task, 3), g.C), gkp + off,
                                gvp + off, gwp + row, gup + row, wsp + task * ws_size);
    });
  });
  return {mask[0] ? sum_leading(gw) : Tensor(), mask[1] ? sum_leading(gu) : Tensor(),
          mask[2] ? gk : Tensor(), mask[3] ? gv : Tensor(), mask[4] ? gs : Tensor()};
}

std::tuple<Tensor, Tensor> wkv4_cpu(const Tensor& time_decay, const Tensor& time_first, const Tensor& k,
                                    const Tensor& v, const optional<Tensor>& state) {
  auto r = forward(time_decay, time_first, k, v, state, /*save=*/false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor> wkv4_forward_cpu(const Tensor& time_decay, const Tensor& time_first,
                                                    const Tensor& k, const Tensor& v,
                                                    const optional<Tensor>& state) {
  return forward(time_decay, time_first, k, v, state, /*save=*/true);
}

void register_kernels(torch::Library& m) {
  m.impl("wkv4", TORCH_FN(wkv4_cpu));
  m.impl("_wkv4_forward", TORCH_FN(wkv4_forward_cpu));
  m.impl("_wkv4_backward", TORCH_FN(backward));
}

}  // namespace

// CPU only: Meta tensors (and torch.compile's fake tensors) go to ops/meta/wkv4.cpp.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) { register_kernels(m); }

}  // namespace cpu
}  // namespace torch_rnn_ext
