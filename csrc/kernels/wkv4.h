#pragma once
// The RWKV-4 WKV recurrence of one block of channels of one batch row, on raw pointers: no at::Tensor,
// no allocation. The time loop is sequential; the loops across channels are the inner ones.
//
// In the numerically stable form of RWKV-4's CUDA kernel, the state of a channel is (aa, bb, pp): the
// numerator and denominator of the running weighted average, scaled by exp(-pp). With w = -exp(decay):
//   p1 = max(pp, u + k_t),  e1 = exp(pp - p1),  e2 = exp(u + k_t - p1)
//   y_t = (e1 aa + e2 v_t) / (e1 bb + e2)
//   p2 = max(w + pp, k_t),  f1 = exp(w + pp - p2),  f2 = exp(k_t - p2)
//   aa' = f1 aa + f2 v_t,  bb' = f1 bb + f2,  pp' = p2
// y does not depend on the choice of p1, so its gradient does not flow through p1; pp' = p2 does, and
// its gradient follows the branch max() took.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/scan_math.h"

namespace torch_rnn_ext {
namespace kernels {

// pp of the empty state: exp(pp - anything finite) is 0.
constexpr double kWkvEmptyPP = -1e38;

// The weights of one step, for the output (e1 on the state, e2 on the current token) and for the
// new state (f1 on the state, f2 on the token; p2 its new pp, take_w whether max() chose w + pp).
template <typename T>
struct WkvWeights {
  T e1, e2, f1, f2, p2;
  T take_w;  // 1 or 0 (a float, not a bool, so that loops over it vectorise)
};

template <typename T>
inline WkvWeights<T> wkv_weights(T w, T u, T pp, T kk) {
  WkvWeights<T> r;
  const T ww1 = u + kk;
  const T p1 = pp > ww1 ? pp : ww1;
  r.e1 = exp_(pp - p1);
  r.e2 = exp_(ww1 - p1);
  const T ww2 = w + pp;
  r.take_w = ww2 >= kk ? T(1) : T(0);
  r.p2 = ww2 >= kk ? ww2 : kk;
  r.f1 = exp_(ww2 - r.p2);
  r.f2 = exp_(kk - r.p2);
  return r;
}

// A block of `width` channels: k and v hold step t at k + t * stride. w = -exp(time_decay), u = time_first.
template <typename T>
struct WkvBlock {
  int64_t T_, width, stride;
  const T* w;
  const T* u;
  const T* k;
  const T* v;
};

// The three rows of a state (aa, bb, pp), each `width` channels.
template <typename T>
struct WkvState {
  T* aa;
  T* bb;
  T* pp;
  WkvState at(int64_t offset) const { return {aa + offset, bb + offset, pp + offset}; }
};

// Forward. s: the initial state on entry, the last on exit. y step t at y + t * stride.
// checkpoints: the state before each chunk of kChunk steps, chunk c at checkpoints.at(c * chunk_stride),
// or checkpoints.aa == nullptr.
template <typename T>
void wkv4_forward(const WkvBlock<T>& p, const WkvState<T>& s, T* y, const WkvState<T>& checkpoints,
                  int64_t chunk_stride) {
  const int64_t W = p.width;
  for (int64_t t = 0; t < p.T_; ++t) {
    if (checkpoints.aa && t % kChunk == 0) {
      const WkvState<T> c = checkpoints.at((t / kChunk) * chunk_stride);
      std::memcpy(c.aa, s.aa, sizeof(T) * W);
      std::memcpy(c.bb, s.bb, sizeof(T) * W);
      std::memcpy(c.pp, s.pp, sizeof(T) * W);
    }
    // Restrict locals: the loop across channels vectorises.
    const T *__restrict k = p.k + t * p.stride, *__restrict v = p.v + t * p.stride;
    const T *__restrict w = p.w, *__restrict u = p.u;
    T *__restrict yt = y + t * p.stride, *__restrict sa = s.aa, *__restrict sb = s.bb, *__restrict sp = s.pp;
    for (int64_t j = 0; j < W; ++j) {
      const T aa = sa[j], bb = sb[j], vv = v[j];
      const WkvWeights<T> q = wkv_weights(w[j], u[j], sp[j], k[j]);
      yt[j] = (q.e1 * aa + q.e2 * vv) / (q.e1 * bb + q.e2);
      sa[j] = q.f1 * aa + q.f2 * vv;
      sb[j] = q.f1 * bb + q.f2;
      sp[j] = q.p2;
    }
  }
}

// Backward. grad_y (step t at grad_y + t * stride) or nullptr. gs: the gradient of the last state on
// entry (zeros when it has none), of the initial state on exit. gk, gv written like y; gw, gu (width)
// accumulated (gradients of w and u). workspace: 3 * kChunk * width values.
template <typename T>
void wkv4_backward(const WkvBlock<T>& p, const WkvState<T>& checkpoints, int64_t chunk_stride,
                   const T* grad_y, const WkvState<T>& gs, T* gk, T* gv, T* gw, T* gu, T* workspace) {
  const int64_t W = p.width;
  // sb.at(i * W): the state before step t0 + i.
  const WkvState<T> sb{workspace, workspace + kChunk * W, workspace + 2 * kChunk * W};
  for (int64_t c = num_chunks(p.T_) - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = std::min(p.T_, t0 + kChunk);
    const WkvState<T> c0 = checkpoints.at(c * chunk_stride);
    std::memcpy(sb.aa, c0.aa, sizeof(T) * W);
    std::memcpy(sb.bb, c0.bb, sizeof(T) * W);
    std::memcpy(sb.pp, c0.pp, sizeof(T) * W);
    for (int64_t t = t0; t + 1 < t1; ++t) {
      const int64_t i = t - t0;
      const WkvState<T> from = sb.at(i * W), to = sb.at((i + 1) * W);
      const T *__restrict k = p.k + t * p.stride, *__restrict v = p.v + t * p.stride;
      const T *__restrict w = p.w, *__restrict u = p.u;
      const T *__restrict fa = from.aa, *__restrict fb = from.bb, *__restrict fp = from.pp;
      T *__restrict ta = to.aa, *__restrict tb = to.bb, *__restrict tp = to.pp;
      for (int64_t j = 0; j < W; ++j) {
        const WkvWeights<T> q = wkv_weights(w[j], u[j], fp[j], k[j]);
        ta[j] = q.f1 * fa[j] + q.f2 * v[j];
        tb[j] = q.f1 * fb[j] + q.f2;
        tp[j] = q.p2;
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const WkvState<T> s = sb.at((t - t0) * W);
      const T *__restrict k = p.k + t * p.stride, *__restrict v = p.v + t * p.stride;
      const T *__restrict w = p.w, *__restrict u = p.u;
      const T *__restrict sa = s.aa, *__restrict sbb = s.bb, *__restrict sp = s.pp;
      const T* __restrict gyt = grad_y ? grad_y + t * p.stride : nullptr;
      T *__restrict gkt = gk + t * p.stride, *__restrict gvt = gv + t * p.stride;
      T *__restrict gwp = gw, *__restrict gup = gu;
      T *__restrict ga = gs.aa, *__restrict gb = gs.bb, *__restrict gp = gs.pp;
      for (int64_t j = 0; j < W; ++j) {
        const T aa = sa[j], bb = sbb[j], vv = v[j];
        const WkvWeights<T> q = wkv_weights(w[j], u[j], sp[j], k[j]);
        const T e1 = q.e1, e2 = q.e2, f1 = q.f1, f2 = q.f2;
        const bool take_w = q.take_w != T(0);
        const T den = e1 * bb + e2;
        const T y = (e1 * aa + e2 * vv) / den;

        const T gnum = (gyt ? gyt[j] : T(0)) / den;
        const T gden = -gnum * y;
        const T gaa = ga[j], gbb = gb[j], gpp = gp[j];
        const T g_e1 = (gnum * aa + gden * bb) * e1;  // gradient of pp - p1
        const T g_e2 = (gnum * vv + gden) * e2;       // of u + k - p1
        const T g_f1 = (gaa * aa + gbb * bb) * f1;    // of w + pp - p2
        const T g_f2 = (gaa * vv + gbb) * f2;         // of k - p2
        const T g_p2 = gpp - g_f1 - g_f2;
        const T g_ww2 = g_f1 + (take_w ? g_p2 : T(0));
        gkt[j] = g_e2 + g_f2 + (take_w ? T(0) : g_p2);
        gvt[j] = gnum * e2 + gaa * f2;
        gwp[j] += g_ww2;
        gup[j] += g_e2;
        ga[j] = gnum * e1 + gaa * f1;
        gb[j] = gden * e1 + gbb * f1;
        gp[j] = g_e1 + g_ww2;
      }
    }
  }
}

}  // namespace kernels
}  // namespace torch_rnn_ext
