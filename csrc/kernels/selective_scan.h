#pragma once
// The selective scan (Mamba S6) of one (batch, channel) row, on raw pointers: no at::Tensor, no
// allocation. The time loop is sequential; the loops over the state dimension N are the inner ones.
//
//   delta'_t = softplus(delta_t + bias) if softplus else delta_t + bias
//   h_t      = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t          (h, A, B_t, C_t of length N)
//   y_t      = sum_n C_t[n] h_t[n] + D u_t;   out_t = y_t * silu(z_t) when z is given
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/scan_math.h"

namespace torch_rnn_ext {
namespace kernels {

// One channel's inputs. u, delta, z are contiguous in time; B_t = B + t * b_step (b_step = N for
// inputs that vary in time, laid out (L, N); 0 for a constant (N) row), likewise C.
template <typename T>
struct ScanChannel {
  int64_t L, N;
  const T* u;
  const T* delta;
  const T* z;  // nullptr: no gate
  const T* A;
  const T* B;
  int64_t b_step;
  const T* C;
  int64_t c_step;
  T D;
  T delta_bias;
  bool softplus;

  T dt(int64_t t) const {
    const T x = delta[t] + delta_bias;
    return softplus ? softplus_of(x) : x;
  }
};

// One step: h <- exp(dt A) h + dt B u; returns sum_n C h. kRecompute: the previous state is h_prev and
// exp(dt A) is also written to a (backward's recomputation); else h is updated in place (forward).
// Pointers are copied to restrict locals so that the loop over N vectorises.
template <bool kRecompute, typename T>
inline T scan_step(const ScanChannel<T>& p, int64_t t, T dt, const T* h_prev, T* h, T* a) {
  const T du = dt * p.u[t];
  const T* __restrict A = p.A;
  const T* __restrict Bt = p.B + t * p.b_step;
  const T* __restrict Ct = p.C + t * p.c_step;
  const T* __restrict hp = kRecompute ? h_prev : h;
  T* __restrict hn_out = h;
  T* __restrict a_out = a;
  T acc[kLanes] = {};
  for_lanes(p.N, [&](int64_t n, int j) {
    const T an = exp_(dt * A[n]);
    if (kRecompute) a_out[n] = an;
    const T hn = an * (kRecompute ? hp[n] : hn_out[n]) + du * Bt[n];
    hn_out[n] = hn;
    acc[j] += Ct[n] * hn;
  });
  return sum_lanes(acc);
}

// y_t without the gate, and the gated output.
template <typename T>
inline T gate(const ScanChannel<T>& p, int64_t t, T y) {
  if (!p.z) return y;
  const T z = p.z[t];
  return y * z * sigmoid_of(z);
}

// Forward of one channel. h (N): the initial state on entry, the last state on exit. out (L).
// checkpoints (num_chunks(L), N) or nullptr: the state before each chunk of kChunk steps.
template <typename T>
void selective_scan_forward(const ScanChannel<T>& p, T* h, T* out, T* checkpoints) {
  for (int64_t t = 0; t < p.L; ++t) {
    if (checkpoints && t % kChunk == 0) std::memcpy(checkpoints + (t / kChunk) * p.N, h, sizeof(T) * p.N);
    const T y = scan_step<false, T>(p, t, p.dt(t), nullptr, h, nullptr) + p.D * p.u[t];
    out[t] = gate(p, t, y);
  }
}

// Where one channel's gradients go. gu, gdelta, gz (L) are written; gz may be nullptr (no z). gA (N),
// gD, gdelta_bias are accumulated; gB_t = gB + t * gb_step is accumulated (gb_step as b_step), likewise gC.
template <typename T>
struct ScanChannelGrads {
  T* gu;
  T* gdelta;
  T* gz;
  T* gA;
  T* gB;
  int64_t gb_step;
  T* gC;
  int64_t gc_step;
  T* gD;
  T* gdelta_bias;
};

// Backward of one channel. grad_out (L) or nullptr (zero). gh (N): the gradient of the last state on
// entry (zeros when it has none), of the initial state on exit. checkpoints as saved by the forward.
// workspace: 2 * kChunk * N + kChunk values.
template <typename T>
void selective_scan_backward(const ScanChannel<T>& p, const T* checkpoints, const T* grad_out, T* gh,
                             const ScanChannelGrads<T>& g, T* workspace) {
  const int64_t N = p.N;
  T* hbuf = workspace;               // h_t of the chunk's steps
  T* abuf = workspace + kChunk * N;  // exp(dt_t A)
  T* ybuf = workspace + 2 * kChunk * N;  // y_t before the gate
  for (int64_t c = num_chunks(p.L) - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = std::min(p.L, t0 + kChunk);
    const T* h0 = checkpoints + c * N;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t - t0;
      const T* hp = i ? hbuf + (i - 1) * N : h0;
      ybuf[i] = scan_step<true, T>(p, t, p.dt(t), hp, hbuf + i * N, abuf + i * N) + p.D * p.u[t];
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const T go = grad_out ? grad_out[t] : T(0);
      T gy = go;
      if (p.z) {
        const T z = p.z[t], s = sigmoid_of(z);
        gy = go * z * s;
        g.gz[t] = go * ybuf[i] * s * (T(1) + z * (T(1) - s));
      }
      const T u = p.u[t], x = p.delta[t] + p.delta_bias;
      const T dt = p.softplus ? softplus_of(x) : x;
      const T* __restrict h = hbuf + i * N;
      const T* __restrict hp = i ? hbuf + (i - 1) * N : h0;
      const T* __restrict a = abuf + i * N;
      const T* __restrict A = p.A;
      const T* __restrict Bt = p.B + t * p.b_step;
      const T* __restrict Ct = p.C + t * p.c_step;
      T* __restrict gA = g.gA;
      T* __restrict gBt = g.gB + t * g.gb_step;
      T* __restrict gCt = g.gC + t * g.gc_step;
      T* __restrict ghn = gh;
      T acc_dt[kLanes] = {}, acc_u[kLanes] = {};
      for_lanes(N, [&](int64_t n, int j) {
        const T gn = ghn[n] + gy * Ct[n];
        gCt[n] += gy * h[n];
        const T ah = a[n] * hp[n];
        gA[n] += gn * dt * ah;
        acc_dt[j] += gn * (A[n] * ah + Bt[n] * u);
        gBt[n] += gn * dt * u;
        acc_u[j] += gn * Bt[n];
        ghn[n] = a[n] * gn;
      });
      const T gdt = sum_lanes(acc_dt);
      const T gd = p.softplus ? gdt * sigmoid_of(x) : gdt;
      g.gdelta[t] = gd;
      *g.gdelta_bias += gd;
      g.gu[t] = dt * sum_lanes(acc_u) + gy * p.D;
      *g.gD += gy * u;
    }
  }
}

}  // namespace kernels
}  // namespace torch_rnn_ext
