#pragma once
// The RWKV-4 WKV recurrence of one block of channels of one batch row, on raw pointers: no at::Tensor,
// no allocation (the API is in scans.h). The time loop is sequential; the loops across channels are the
// inner ones, branch-free so that they vectorise.
//
// In the numerically stable form of RWKV-4's CUDA kernel, the state of a channel is (aa, bb, pp): the
// numerator and denominator of the running weighted average, scaled by exp(-pp). With w = -exp(decay):
//   p1 = max(pp, u + k_t),  e1 = exp(pp - p1),  e2 = exp(u + k_t - p1)
//   y_t = (e1 aa + e2 v_t) / (e1 bb + e2)
//   p2 = max(w + pp, k_t),  f1 = exp(w + pp - p2),  f2 = exp(k_t - p2)
//   aa' = f1 aa + f2 v_t,  bb' = f1 bb + f2,  pp' = p2
// One of e1, e2 is exp(0) = 1 and the other is exp(-|pp - u - k_t|) (a - b is exactly -(b - a)), so one
// exp gives both; likewise f1, f2: two exps per step and channel, not four, with the same bits.
// y does not depend on the choice of p1, so its gradient does not flow through p1; pp' = p2 does, and
// its gradient follows the branch max() took.
//
// Included by capability-specific translation units (scans_instances.h): everything lives in the
// capability namespace TRE_CPU_CAPABILITY.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/scan_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// The weights of one step, for the output (e1 on the state, e2 on the current token) and for the
// new state (f1 on the state, f2 on the token; p2 its new pp, take_w whether max() chose w + pp).
template <typename T>
struct WkvWeights {
  T e1, e2, f1, f2, p2;
  T take_w;  // 1 or 0 (a float, not a bool, so that loops over it vectorise)
};

// a - b for two log-weights, 0 when they are equal: two weights of e^-inf are then equal (and both
// vanish against any finite one later) instead of giving inf - inf = NaN.
template <typename T>
inline T log_weight_gap(T a, T b) {
  return select_(a == b, T(0), a - b);
}

template <typename T>
inline WkvWeights<T> wkv_weights(T w, T u, T pp, T kk) {
  WkvWeights<T> r;
  const T d1 = log_weight_gap(pp, u + kk);  // p1 = pp when d1 > 0
  const T x1 = exp_(-std::abs(d1));
  const bool take_pp = d1 > T(0);
  r.e1 = select_(take_pp, T(1), x1);
  r.e2 = select_(take_pp, x1, T(1));
  const T ww2 = w + pp, d2 = log_weight_gap(ww2, kk);  // p2 = w + pp when d2 >= 0
  const bool take_w = d2 >= T(0);
  const T x2 = exp_(-std::abs(d2));
  r.take_w = select_(take_w, T(1), T(0));
  r.p2 = select_(take_w, ww2, kk);
  r.f1 = select_(take_w, T(1), x2);
  r.f2 = select_(take_w, x2, T(1));
  return r;
}

// The loops across channels are functions with restrict parameters: GCC vectorises them (it does not
// when they sit in the time loop with restrict locals).

// One forward step of W channels: y and the state (aa, bb, pp) in place.
template <typename T>
inline void wkv4_forward_step(int64_t W, const T* __restrict w, const T* __restrict u, const T* __restrict k,
                              const T* __restrict v, T* __restrict sa, T* __restrict sb, T* __restrict sp,
                              T* __restrict y) {
  for (int64_t j = 0; j < W; ++j) {
    const T aa = sa[j], bb = sb[j], vv = v[j];
    const WkvWeights<T> q = wkv_weights(w[j], u[j], sp[j], k[j]);
    y[j] = (q.e1 * aa + q.e2 * vv) / (q.e1 * bb + q.e2);
    sa[j] = q.f1 * aa + q.f2 * vv;
    sb[j] = q.f1 * bb + q.f2;
    sp[j] = q.p2;
  }
}

// The state after one step, written to (ta, tb, tp) (backward's recomputation).
template <typename T>
inline void wkv4_state_step(int64_t W, const T* __restrict w, const T* __restrict u, const T* __restrict k,
                            const T* __restrict v, const T* __restrict fa, const T* __restrict fb,
                            const T* __restrict fp, T* __restrict ta, T* __restrict tb, T* __restrict tp) {
  for (int64_t j = 0; j < W; ++j) {
    const WkvWeights<T> q = wkv_weights(w[j], u[j], fp[j], k[j]);
    ta[j] = q.f1 * fa[j] + q.f2 * v[j];
    tb[j] = q.f1 * fb[j] + q.f2;
    tp[j] = q.p2;
  }
}

// One backward step from the state (sa, sbb, sp) before it: gk, gv written, gw, gu accumulated, the state
// gradient (ga, gb, gp) in place. gy may be nullptr (zero).
template <typename T>
inline void wkv4_backward_step(int64_t W, const T* __restrict w, const T* __restrict u, const T* __restrict k,
                               const T* __restrict v, const T* __restrict sa, const T* __restrict sbb,
                               const T* __restrict sp, const T* __restrict gyt, T* __restrict gkt,
                               T* __restrict gvt, T* __restrict gwp, T* __restrict gup, T* __restrict ga,
                               T* __restrict gb, T* __restrict gp) {
  for (int64_t j = 0; j < W; ++j) {
    const T aa = sa[j], bb = sbb[j], vv = v[j];
    const WkvWeights<T> q = wkv_weights(w[j], u[j], sp[j], k[j]);
    const T e1 = q.e1, e2 = q.e2, f1 = q.f1, f2 = q.f2;
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
    const T g_p2_w = q.take_w * g_p2;             // g_p2 on the branch max() took
    const T g_ww2 = g_f1 + g_p2_w;
    gkt[j] = g_e2 + g_f2 + (g_p2 - g_p2_w);
    gvt[j] = gnum * e2 + gaa * f2;
    gwp[j] += g_ww2;
    gup[j] += g_e2;
    ga[j] = gnum * e1 + gaa * f1;
    gb[j] = gden * e1 + gbb * f1;
    gp[j] = g_e1 + g_ww2;
  }
}

// w = -exp(time_decay) of a block's channels.
template <typename T>
inline void decay_weights(const WkvBlock<T>& p, T* __restrict w) {
  for (int64_t j = 0; j < p.width; ++j) w[j] = -exp_(p.time_decay[j]);
}

template <typename T>
void wkv4_forward_kernel(const WkvBlock<T>& p, const WkvState<T>& s, T* y, const WkvState<T>& checkpoints,
                         int64_t chunk_stride) {
  const int64_t W = p.width;
  T w[kWkvMaxWidth];
  decay_weights(p, w);
  for (int64_t t = 0; t < p.T_; ++t) {
    if (checkpoints.aa && t % kChunk == 0) {
      const WkvState<T> c = checkpoints.at((t / kChunk) * chunk_stride);
      std::memcpy(c.aa, s.aa, sizeof(T) * W);
      std::memcpy(c.bb, s.bb, sizeof(T) * W);
      std::memcpy(c.pp, s.pp, sizeof(T) * W);
    }
    wkv4_forward_step(W, w, p.u, p.k + t * p.stride, p.v + t * p.stride, s.aa, s.bb, s.pp, y + t * p.stride);
  }
}

template <typename T>
void wkv4_backward_kernel(const WkvBlock<T>& p, const WkvState<T>& checkpoints, int64_t chunk_stride,
                          const T* grad_y, const WkvState<T>& gs, T* gk, T* gv, T* gdecay, T* gu,
                          T* workspace) {
  const int64_t W = p.width;
  T w[kWkvMaxWidth], gw[kWkvMaxWidth];
  decay_weights(p, w);
  std::fill(gw, gw + W, T(0));
  std::fill(gu, gu + W, T(0));
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
      wkv4_state_step(W, w, p.u, p.k + t * p.stride, p.v + t * p.stride, from.aa, from.bb, from.pp, to.aa,
                      to.bb, to.pp);
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const WkvState<T> s = sb.at((t - t0) * W);
      const int64_t off = t * p.stride;
      wkv4_backward_step(W, w, p.u, p.k + off, p.v + off, s.aa, s.bb, s.pp, grad_y ? grad_y + off : nullptr,
                         gk + off, gv + off, gw, gu, gs.aa, gs.bb, gs.pp);
    }
  }
  for (int64_t j = 0; j < W; ++j) gdecay[j] = gw[j] * w[j];  // d w / d time_decay = w
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
