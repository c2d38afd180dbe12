#pragma once
// The selective scan (Mamba S6) of one (batch, channel) row, or of a block of channels of a one-chunk scan,
// on raw pointers: no at::Tensor, no allocation (the recurrence is in scans.h). Work goes chunk by chunk
// (kChunk steps): one branch-free pass computes delta' and delta' u of the chunk's steps, one vectorised
// pass exp(delta' A) of all its (step, state) pairs (N = 16, and backward; forward with another N computes
// them within the steps), the sequential time loop runs with the loops over the state dimension N innermost
// (N = 16 is compiled as a constant), and one pass applies the gate. Every value is computed by the same
// expression whatever the chunking, so a scan split into calls gives the bits of one call.
//
// Included by capability-specific translation units (scans_instances.h): everything lives in the
// capability namespace TRE_CPU_CAPABILITY.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/scan_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// Asks for the cache lines of x[0, n) before they are used: a channel's rows are short and read chunk by
// chunk (backward: in reverse), so the hardware prefetcher finds them late or not at all.
template <typename T>
inline void prefetch_span(const T* x, int64_t n) {
  if (!x) return;
  for (int64_t i = 0; i < n; i += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(x + i);
}

// dt[i] = delta'_{t0+i} and du[i] = dt[i] u_{t0+i} for i in [0, n).
template <typename T>
inline void scan_deltas(const ScanChannel<T>& p, int64_t t0, int64_t n, T* __restrict dt, T* __restrict du) {
  const T* __restrict d = p.delta + t0;
  const T* __restrict u = p.u + t0;
  const T bias = p.delta_bias;
  if (p.softplus) {
    for (int64_t i = 0; i < n; ++i) {
      const T x = softplus_(d[i] + bias);
      dt[i] = x;
      du[i] = x * u[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const T x = d[i] + bias;
      dt[i] = x;
      du[i] = x * u[i];
    }
  }
}

// The loops over N are functions with restrict parameters, so that GCC vectorises them. kN: N as a
// constant, or 0.

// One forward step: h <- exp(dt A) hp + du B (hp is the state before; it may be h: in place); returns
// sum_n C h. Not inlined: in its own function GCC keeps the accumulators in registers (inlined into the
// time loop it spills them).
template <int kN, typename T>
__attribute__((noinline)) T scan_step(int64_t N_, T dt, T du, const T* __restrict A, const T* __restrict B,
                                      const T* __restrict C, const T* hp, T* h) {
  const int64_t N = kN ? kN : N_;
  T acc[kLanes] = {};
  for_lanes(N, [&](int64_t k, int j) {
    const T hk = exp_(dt * A[k]) * hp[k] + du * B[k];
    h[k] = hk;
    acc[j] += C[k] * hk;
  });
  return sum_lanes(acc);
}

// exp(dt_i A) of a chunk's steps, a[i N + k] = exp(dt[i] A[k]) for i in [0, n), out of the sequential
// loop (which is then only multiply-adds): one pass forms and clamps the arguments, one long loop over
// independent values takes their exp with its constants in registers.
template <int kN, typename T>
__attribute__((noinline)) void scan_decays(int64_t N_, int64_t n, const T* __restrict dt, const T* __restrict A,
                                           T* __restrict a) {
  const int64_t N = kN ? kN : N_;
  for (int64_t i = 0; i < n; ++i) {
    const T d = dt[i];
    T* __restrict ai = a + i * N;
    for (int64_t k = 0; k < N; ++k) ai[k] = exp_clamp_(d * A[k]);
  }
  for (int64_t j = 0; j < n * N; ++j) a[j] = exp_clamped_(a[j]);
}

// One step from hp given a = exp(dt A): h <- a hp + du B; returns sum_n C h.
template <int kN, typename T>
__attribute__((noinline)) T scan_step_from(int64_t N_, T du, const T* __restrict a, const T* __restrict B,
                                           const T* __restrict C, const T* __restrict hp, T* __restrict h) {
  const int64_t N = kN ? kN : N_;
  T acc[kLanes] = {};
  for_lanes(N, [&](int64_t k, int j) {
    const T hk = a[k] * hp[k] + du * B[k];
    h[k] = hk;
    acc[j] += C[k] * hk;
  });
  return sum_lanes(acc);
}

// Steps [t0, t0 + n): y[i] = sum_n C_t h_t + D u_t, from the state h0 before step t0; h_t and exp(dt A)
// are written to rows i of h and abuf (n x N each).
template <int kN, typename T>
inline void scan_steps(const ScanChannel<T>& p, int64_t t0, int64_t n, const T* dt, const T* du, const T* h0,
                       T* h, T* abuf, T* y) {
  const int64_t N = kN ? kN : p.N;
  scan_decays<kN>(N, n, dt, p.A, abuf);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = t0 + i;
    const T s = scan_step_from<kN>(N, du[i], abuf + i * N, p.B + t * p.b_step, p.C + t * p.c_step,
                                   i ? h + (i - 1) * N : h0, h + i * N);
    y[i] = p.add_skip(s, t);
  }
}

// The same steps with the state updated in place and exp(dt A) computed within the step (the forward for
// an N that is not a compile-time constant, which has no buffer of n x N).
template <typename T>
inline void scan_steps_in_place(const ScanChannel<T>& p, int64_t t0, int64_t n, const T* dt, const T* du, T* h,
                                T* y) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = t0 + i;
    y[i] = p.add_skip(scan_step<0>(p.N, dt[i], du[i], p.A, p.B + t * p.b_step, p.C + t * p.c_step, h, h), t);
  }
}

// out[i] = y[i] silu(z[i]) (in place: out may be y).
template <typename T>
inline void scan_gate(const T* __restrict z, int64_t n, const T* y, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    const T zi = z[i];
    out[i] = y[i] * zi * scan_sigmoid(zi);
  }
}

// Steps [t0, t0 + n) of one channel given their deltas (scan_deltas), from the state before at h0 (which may
// be h): y (with the skip term, before the gate) to y[0, n), the state after to h. kN > 0: the steps' states
// and exp(dt A) go through hbuf and abuf (kN x kChunk values each), as backward recomputes them, so that both
// run the same code.
template <int kN, typename T>
inline void scan_chunk(const ScanChannel<T>& p, int64_t t0, int64_t n, const T* dt, const T* du, const T* h0,
                       T* h, T* hbuf, T* abuf, T* y) {
  if constexpr (kN > 0) {
    scan_steps<kN, T>(p, t0, n, dt, du, h0, hbuf, abuf, y);
    std::memcpy(h, hbuf + (n - 1) * kN, sizeof(T) * kN);
  } else {
    if (h != h0) std::memcpy(h, h0, sizeof(T) * p.N);
    scan_steps_in_place(p, t0, n, dt, du, h, y);
  }
}

template <int kN, typename T>
void selective_scan_forward_impl(const ScanChannel<T>& p, T* h, T* out, T* checkpoints) {
  T dt[kChunk], du[kChunk];
  constexpr int64_t kBuf = kN ? kN * kChunk : 1;
  T hbuf[kBuf], abuf[kBuf];
  for (int64_t t0 = 0; t0 < p.L; t0 += kChunk) {
    const int64_t n = std::min(kChunk, p.L - t0);
    if (checkpoints) std::memcpy(checkpoints + (t0 / kChunk) * p.N, h, sizeof(T) * p.N);
    scan_deltas(p, t0, n, dt, du);
    scan_chunk<kN>(p, t0, n, dt, du, h, h, hbuf, abuf, out + t0);
    if (p.z) scan_gate(p.z + t0, n, out + t0, out + t0);
  }
}

template <typename T>
void selective_scan_forward_kernel(const ScanChannel<T>& p, T* h, T* out, T* checkpoints) {
  if (p.N == 16) return selective_scan_forward_impl<16>(p, h, out, checkpoints);
  selective_scan_forward_impl<0>(p, h, out, checkpoints);
}

// selective_scan_block (scans.h): the block in pieces of at most kBlockSpan steps of whole channels, each
// piece's deltas and gates in loops across its channels' steps, and per channel the steps of
// selective_scan_forward_impl.
constexpr int64_t kBlockSpan = 512;

// dt and du (as scan_deltas gives them) of the L steps of the n channels from c0 of a block, channel i's at
// [i L, (i + 1) L).
template <typename T>
inline void block_deltas(const ScanBlock<T>& p, int64_t c0, int64_t n, T* __restrict dt, T* __restrict du) {
  const int64_t L = p.L, span = n * L;
  const T* __restrict d = p.delta + c0 * L;
  const T* __restrict u = p.u + c0 * L;
  // delta' = softplus(delta + bias) (bias 0 when absent), du = delta' u; each case its own loop, so that
  // GCC vectorises it.
  if (p.delta_bias) {
    const T* __restrict bias = p.delta_bias + c0;
    if (L == 1) {
      for (int64_t i = 0; i < n; ++i) dt[i] = d[i] + bias[i];
    } else {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t t = 0; t < L; ++t) dt[i * L + t] = d[i * L + t] + bias[i];
    }
  } else {
    for (int64_t i = 0; i < span; ++i) dt[i] = d[i] + T(0);
  }
  if (p.softplus)
    for (int64_t i = 0; i < span; ++i) dt[i] = softplus_(dt[i]);
  for (int64_t i = 0; i < span; ++i) du[i] = dt[i] * u[i];
}

#if defined(__AVX2__) && defined(__FMA__)
// The decode step (L = 1) of float states with N = 16, kDecodeLanes channels at a time in native vectors
// (GCC vector extensions): each channel's exp(dt A), new state and products with C lane by lane as
// scan_step computes them, and its sum over N (the 8 accumulator lanes of for_lanes, then sum_lanes' tree)
// with the channels across the lanes: each level of the tree adds two vectors' shuffled halves, so one add
// serves many channels instead of a horizontal sum per channel. Same bits as scan_step, in both widths.
#if defined(__AVX512F__)
constexpr int kDecodeLanes = 16;
#else
constexpr int kDecodeLanes = 8;
#endif
typedef float DecodeVec __attribute__((vector_size(4 * kDecodeLanes)));
typedef float DecodeVecU __attribute__((vector_size(4 * kDecodeLanes), aligned(4)));
typedef uint32_t DecodeBits __attribute__((vector_size(4 * kDecodeLanes)));
constexpr int kDecodeN = 16;
constexpr int kDecodeVecs = kDecodeN / kDecodeLanes;  // vectors per channel's state
static_assert(kLanes == 8, "the decode step's tree is sum_lanes' for 8 accumulator lanes");

inline DecodeVec decode_load(const float* p) { return *reinterpret_cast<const DecodeVecU*>(p); }
inline void decode_store(float* p, DecodeVec v) { *reinterpret_cast<DecodeVecU*>(p) = v; }

// A level of sum_lanes' tree for the groups of lanes in two vectors: each group (of g lanes, the g
// partial sums of one channel) becomes its lower half plus its upper half; a's groups come first.
template <int g>
inline DecodeVec decode_halve(DecodeVec a, DecodeVec b) {
#if defined(__AVX512F__)
  if constexpr (g == 8)
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  else if constexpr (g == 4)
    return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  else
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#else
  if constexpr (g == 8)
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
  else if constexpr (g == 4)
    return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15);
  else
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
#endif
}

// Channels [0, kDecodeLanes) of a block piece at L = 1: s[i] = sum_n C h of channel i, its new state to
// h + i 16 from h_in + i 16; dt, du as block_deltas gives them.
inline void decode_channels(const ScanBlock<float>& p, int64_t c0, const float* dt, const float* du,
                            const float* h_in, float* h, float* s) {
  // The new state of channel i (as scan_step: exp_(dt A) hp + du B) to h and hv, its C to cv.
  const auto step = [&](int i, DecodeVec* hv, DecodeVec* cv) {
    const int64_t c = c0 + i;
    const float *A = p.A + c * kDecodeN, *B = p.B + c * p.b_stride, *C = p.C + c * p.c_stride;
    for (int v = 0; v < kDecodeVecs; ++v) {
      const int64_t k = v * kDecodeLanes;
      const DecodeVec a = fast_exp_vec<DecodeVec, DecodeBits>(dt[i] * decode_load(A + k));
      hv[v] = a * decode_load(h_in + c * kDecodeN + k) + du[i] * decode_load(B + k);
      decode_store(h + c * kDecodeN + k, hv[v]);
      cv[v] = decode_load(C + k);
    }
  };
  // acc[m]: the 8 accumulator lanes of for_lanes (state n at lane n % 8), acc += C h as scan_step adds them,
  // of channel m (32-byte vectors) or of channels 2m and 2m + 1 (64-byte ones: lanes 0-7 and 8-15)
  DecodeVec acc[8];
  const DecodeVec zero = {};
  for (int m = 0; m < 8; ++m) {
    DecodeVec a = zero;
#if defined(__AVX512F__)
    DecodeVec h0[1], c0v[1], h1[1], c1v[1];
    step(2 * m, h0, c0v);
    step(2 * m + 1, h1, c1v);
    a += __builtin_shufflevector(c0v[0], c1v[0], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) *
         __builtin_shufflevector(h0[0], h1[0], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    a += __builtin_shufflevector(c0v[0], c1v[0], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31) *
         __builtin_shufflevector(h0[0], h1[0], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
#else
    DecodeVec hv[2], cv[2];
    step(m, hv, cv);
    a += cv[0] * hv[0];
    a += cv[1] * hv[1];
#endif
    acc[m] = a;
  }
  DecodeVec b[4], c[2];
  for (int m = 0; m < 4; ++m) b[m] = decode_halve<8>(acc[2 * m], acc[2 * m + 1]);
  for (int m = 0; m < 2; ++m) c[m] = decode_halve<4>(b[2 * m], b[2 * m + 1]);
  decode_store(s, decode_halve<2>(c[0], c[1]));
}
#endif

template <int kN, typename T>
void selective_scan_block_impl(const ScanBlock<T>& p, const T* h_in, T* h, T* out) {
  const int64_t N = kN ? kN : p.N, L = p.L;
  const int64_t per = std::max<int64_t>(1, kBlockSpan / L);  // channels per piece
  T dt[kBlockSpan], du[kBlockSpan], y[kBlockSpan];
  constexpr int64_t kBuf = kN ? kN * kChunk : 1;
  T hbuf[kBuf], abuf[kBuf];
  for (int64_t c0 = 0; c0 < p.count; c0 += per) {
    const int64_t n = std::min(per, p.count - c0);
    block_deltas(p, c0, n, dt, du);
    if (L > 1) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = c0 + i;
        const ScanChannel<T> q{L, N, p.u + c * L, p.delta + c * L, nullptr, p.A + c * N, p.B + c * p.b_stride,
                               p.b_step, p.C + c * p.c_stride, p.c_step, p.D ? p.D[c] : T(0), T(0), p.softplus,
                               p.D != nullptr};
        scan_chunk<kN>(q, 0, L, dt + i * L, du + i * L, h_in + c * N, h + c * N, hbuf, abuf, out + c * L);
      }
    } else {  // one step per channel, in registers
      const T* __restrict u = p.u + c0;
      int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
      if constexpr (kN == 16 && std::is_same<T, float>::value) {
        for (; i + kDecodeLanes <= n; i += kDecodeLanes) decode_channels(p, c0 + i, dt + i, du + i, h_in, h, y + i);
      }
#endif
      for (; i < n; ++i) {
        const int64_t c = c0 + i;
        const T *A = p.A + c * N, *B = p.B + c * p.b_stride, *C = p.C + c * p.c_stride;
        if constexpr (kN > 0 && std::is_same<T, double>::value) {
          // float64 exp is libm's, whose loop in scan_decays GCC may vectorise (glibc's vector exp, other
          // bits than the scalar call): the full scan's two passes, as it runs them
          scan_decays<kN>(N, 1, dt + i, A, abuf);
          y[i] = scan_step_from<kN>(N, du[i], abuf, B, C, h_in + c * N, h + c * N);
        } else {
          // exp(dt A) within the step: float32's exp_ is exp_clamped_(exp_clamp_), scan_decays' two passes
          y[i] = scan_step<kN>(N, dt[i], du[i], A, B, C, h_in + c * N, h + c * N);
        }
      }
      for (int64_t j = 0; j < n; ++j) out[c0 + j] = plus_skip(y[j], p.D != nullptr, p.D ? p.D[c0 + j] : T(0), u[j]);
    }
    if (p.z) scan_gate(p.z + c0 * L, n * L, out + c0 * L, out + c0 * L);
  }
}

template <typename T>
void selective_scan_block_kernel(const ScanBlock<T>& p, const T* h_in, T* h, T* out) {
  if (p.N == 16) return selective_scan_block_impl<16>(p, h_in, h, out);
  selective_scan_block_impl<0>(p, h_in, h, out);
}

// One backward step: gh (the gradient of h_t on entry, of h_{t-1} on exit), gA, gB, gC accumulated;
// *gdt and *gdu: the gradients of dt and of u / dt.
template <int kN, typename T>
__attribute__((noinline)) void scan_step_backward(int64_t N_, T gy, T dt, T du, T u, const T* __restrict A,
                                                   const T* __restrict B,
                               const T* __restrict C, const T* __restrict h, const T* __restrict hp,
                               const T* __restrict a, T* __restrict gA, T* __restrict gB, T* __restrict gC,
                               T* __restrict gh, T* gdt, T* gdu) {
  const int64_t N = kN ? kN : N_;
  T acc_dt[kLanes] = {}, acc_u[kLanes] = {};
  for_lanes(N, [&](int64_t k, int j) {
    const T gn = gh[k] + gy * C[k];
    gC[k] += gy * h[k];
    const T ah = a[k] * hp[k];
    gA[k] += gn * dt * ah;
    acc_dt[j] += gn * (A[k] * ah + B[k] * u);
    gB[k] += gn * du;
    acc_u[j] += gn * B[k];
    gh[k] = a[k] * gn;
  });
  *gdt = sum_lanes(acc_dt);
  *gdu = sum_lanes(acc_u);
}

template <int kN, typename T>
void selective_scan_backward_impl(const ScanChannel<T>& p, const T* checkpoints, const T* grad_out, T* gh,
                                  const ScanChannelGrads<T>& g, T* workspace) {
  const int64_t N = kN ? kN : p.N;
  T* hbuf = workspace;               // h_t of the chunk's steps
  T* abuf = workspace + kChunk * N;  // exp(dt_t A)
  T dt[kChunk], du[kChunk], y[kChunk], gy[kChunk];
  for (int64_t c = num_chunks(p.L) - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, n = std::min(kChunk, p.L - t0);
    const T* h0 = checkpoints + c * N;
    if (c > 0) {  // the next chunk's inputs
      const int64_t tp = t0 - kChunk;
      prefetch_span(p.delta + tp, kChunk);
      prefetch_span(p.u + tp, kChunk);
      prefetch_span(p.z ? p.z + tp : nullptr, kChunk);
      prefetch_span(grad_out ? grad_out + tp : nullptr, kChunk);
      prefetch_span(g.gu + tp, kChunk);
      prefetch_span(g.gdelta + tp, kChunk);
      prefetch_span(g.gz ? g.gz + tp : nullptr, kChunk);
    }
    scan_deltas(p, t0, n, dt, du);
    scan_steps<kN, T>(p, t0, n, dt, du, h0, hbuf, abuf, y);
    // The gradient of y before the gate, and of z.
    if (p.z) {
      const T* __restrict z = p.z + t0;
      T* __restrict gz = g.gz + t0;
      for (int64_t i = 0; i < n; ++i) {
        const T go = grad_out ? grad_out[t0 + i] : T(0), zi = z[i], s = scan_sigmoid(zi);
        gy[i] = go * zi * s;
        gz[i] = go * y[i] * s * (T(1) + zi * (T(1) - s));
      }
    } else {
      for (int64_t i = 0; i < n; ++i) gy[i] = grad_out ? grad_out[t0 + i] : T(0);
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      const T u = p.u[t];
      T gdt, gdu;
      scan_step_backward<kN>(N, gy[i], dt[i], du[i], u, p.A, p.B + t * p.b_step, p.C + t * p.c_step,
                             hbuf + i * N, i ? hbuf + (i - 1) * N : h0, abuf + i * N, g.gA, g.gB + t * g.gb_step,
                             g.gC + t * g.gc_step, gh, &gdt, &gdu);
      g.gdelta[t] = gdt;  // of delta'; times softplus' below
      g.gu[t] = dt[i] * gdu + gy[i] * p.D;
    }
    T* __restrict gd = g.gdelta + t0;
    if (p.softplus) {
      const T* __restrict d = p.delta + t0;
      const T bias = p.delta_bias;
      for (int64_t i = 0; i < n; ++i) gd[i] *= scan_sigmoid(d[i] + bias);
    }
    // Summed in lanes: a scalar chain of multiply-adds here is vectorised by GCC as an in-order reduction
    // with the multiplies apart, differently for AVX2 and AVX-512; lanes give the same bits for both.
    T lanes_bias[kLanes] = {}, lanes_D[kLanes] = {};
    const T* __restrict u = p.u + t0;
    for_lanes(n, [&](int64_t i, int j) {
      lanes_bias[j] += gd[i];
      lanes_D[j] += gy[i] * u[i];
    });
    *g.gdelta_bias += sum_lanes(lanes_bias);
    *g.gD += sum_lanes(lanes_D);
  }
}

template <typename T>
void selective_scan_backward_kernel(const ScanChannel<T>& p, const T* checkpoints, const T* grad_out, T* gh,
                                    const ScanChannelGrads<T>& g, T* workspace) {
  if (p.N == 16) return selective_scan_backward_impl<16>(p, checkpoints, grad_out, gh, g, workspace);
  selective_scan_backward_impl<0>(p, checkpoints, grad_out, gh, g, workspace);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
