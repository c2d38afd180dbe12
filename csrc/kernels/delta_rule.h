#pragma once
// The gated delta rule (Gated DeltaNet) of one panel of a value head's state, on raw pointers: no
// at::Tensor, no allocation (the API and the recurrence are in scans.h). A panel is kDeltaWidth columns of
// the (K, V) state kept in a contiguous (K, kDeltaWidth) buffer, so it stays in L1 across the time loop;
// columns past the panel's width are zero and stay zero (their v is 0, so their u is 0).
//
// Per step: pass 1 decays each row and accumulates p = S'^T k; pass 2 adds k u^T and accumulates
// o = S^T (scale q). Rows are explicit 32-byte vectors; sums over rows run in four accumulators combined in
// a fixed order, and dots across a panel's columns are summed four rows at a time by a fixed shuffle tree
// (sum4): the same bits for any thread count, and in the avx2 and avx512 builds. Backward recomputes a
// chunk's states from the one saved before it and walks the chunk in reverse.
//
// Included by capability-specific translation units (scans_instances.h): everything lives in the
// capability namespace TRE_CPU_CAPABILITY.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/scans.h"       // DeltaPanel, kChunk
#include "kernels/small_gemm.h"  // Vec, sum4

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

namespace delta {

constexpr int64_t W = kDeltaWidth;

// A panel row is kRowVecs 32-byte vectors (Vec<T>, GCC vector extensions: the same lane arithmetic in
// every build). Row sums run in four accumulators (rows i % 4) combined as (0 + 1) + (2 + 3); a dot of two
// rows is their vectors' products added in order, whose lanes are summed four rows at a time by sum4's
// fixed tree.
template <typename T>
constexpr int kRowVecs = static_cast<int>(W / Tile<T>::kLanes);
static_assert(W % 8 == 0, "a panel row is whole vectors of float and of double");

template <typename T>
struct Row {
  Vec<T> v[kRowVecs<T>];
};

// Loads and stores typed as vectors of T (not memcpy, whose char access may alias anything and so makes
// the compiler reload every pointer after a store), at T's alignment.
template <typename T>
struct UnalignedVecOf {
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
};

template <typename T>
inline Row<T> load_row(const T* p) {
  using U = typename UnalignedVecOf<T>::type;
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = *reinterpret_cast<const U*>(p + n * Tile<T>::kLanes);
  return r;
}

template <typename T>
inline void store_row(T* p, const Row<T>& r) {
  using U = typename UnalignedVecOf<T>::type;
  for (int n = 0; n < kRowVecs<T>; ++n) *reinterpret_cast<U*>(p + n * Tile<T>::kLanes) = r.v[n];
}

template <typename T>
inline Row<T> zero_row() {
  Row<T> r;
  for (auto& v : r.v) v = Vec<T>{};
  return r;
}

// Row-wise a x + b y, a x, and acc += a x (a, b scalars).
template <typename T>
inline Row<T> axpby(T a, const Row<T>& x, T b, const Row<T>& y) {
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = a * x.v[n] + b * y.v[n];
  return r;
}
template <typename T>
inline Row<T> scale_row(T a, const Row<T>& x) {
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = a * x.v[n];
  return r;
}
template <typename T>
inline void add_scaled(Row<T>& acc, T a, const Row<T>& x) {
  for (int n = 0; n < kRowVecs<T>; ++n) acc.v[n] += a * x.v[n];
}

// The lanes of x . y, not yet summed.
template <typename T>
inline Vec<T> dot_lanes(const Row<T>& x, const Row<T>& y) {
  Vec<T> s = x.v[0] * y.v[0];
  for (int n = 1; n < kRowVecs<T>; ++n) s += x.v[n] * y.v[n];
  return s;
}

// Four row accumulators combined as (0 + 1) + (2 + 3).
template <typename T>
inline Row<T> combine(const Row<T>* acc) {
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = (acc[0].v[n] + acc[1].v[n]) + (acc[2].v[n] + acc[3].v[n]);
  return r;
}

// x . y summed (one value).
template <typename T>
inline T dot(const Row<T>& x, const Row<T>& y) {
  T out[4];
  sum4(dot_lanes(x, y), Vec<T>{}, Vec<T>{}, Vec<T>{}, out);
  return out[0];
}

// A step's decays: a[i * step] for key row i (step 1 per key, 0 for one decay per head); 1 without gate.
template <typename T>
struct Decay {
  const T* a;
  int64_t step;
  Decay(const DeltaPanel<T>& p, int64_t t)
      : a(p.decay ? p.decay + t * p.decay_stride : nullptr), step(p.per_key ? 1 : 0) {}
  T operator[](int64_t i) const { return a ? a[i * step] : T(1); }
};

// A panel's values at one step, padded to W with zeros.
template <typename T>
inline Row<T> load_padded(const T* src, int64_t width) {
  if (width == W) return load_row(src);
  T buf[W];
  for (int64_t j = 0; j < W; ++j) buf[j] = j < width ? src[j] : T(0);
  return load_row(buf);
}

// Pass 1 on the state S before step t (rows at S + i * ld): returns p = (a S)^T k; with kWrite, S' = a S
// goes to the panel buffer Sp (which may be S). Four rows per iteration, one accumulator each (the tail's
// rows go to the first ones).
template <bool kWrite, typename T>
inline Row<T> decay_and_project(int64_t K, const Decay<T>& a, const T* __restrict k, const T* S, T* Sp,
                                int64_t ld = W) {
  Row<T> acc[4] = {zero_row<T>(), zero_row<T>(), zero_row<T>(), zero_row<T>()};
  int64_t i = 0;
  for (; i + 4 <= K; i += 4) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      // Rows of a state read in place (ld > W) are a line apart: ask for the next panel's line of the row
      // (to the L2 cache) while this one's is waited for. A hint only: it never faults.
      if (ld != W) __builtin_prefetch(S + (i + r) * ld + W, 0, 2);
      const Row<T> sp = scale_row(a[i + r], load_row(S + (i + r) * ld));
      add_scaled(acc[r], k[i + r], sp);
      if (kWrite) store_row(Sp + (i + r) * W, sp);
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r) {
    if (i + r >= K) break;
    const Row<T> sp = scale_row(a[i + r], load_row(S + (i + r) * ld));
    add_scaled(acc[r], k[i + r], sp);
    if (kWrite) store_row(Sp + (i + r) * W, sp);
  }
  return combine(acc);
}

// One forward step on the panel S (in place); with kOutput, o (width values) gets S_t^T (scale q). A full
// panel (width W) can read the state before the step from src (rows at src + i * src_ld) instead of S, and
// write the state after it to also (rows at also + i * also_ld) instead of S: a stream's state read and
// written in place, without separate passes to load and store it.
template <bool kOutput, typename T>
inline void forward_step(const DeltaPanel<T>& p, int64_t t, T* S, T* o, const T* src = nullptr,
                         int64_t src_ld = W, T* also = nullptr, int64_t also_ld = 0) {
  const int64_t K = p.K;
  const T* __restrict k = p.k + t * p.qk_stride;
  const T* __restrict q = p.q + t * p.qk_stride;
  const T scale = p.scale, beta = p.beta[t * p.beta_stride];
  const Row<T> v = load_padded(p.v + t * p.v_stride, p.width);
  const Row<T> pr = decay_and_project<true>(K, Decay<T>(p, t), k, src ? src : S, S, src ? src_ld : W);
  const Row<T> u = scale_row(beta, axpby(T(1), v, T(-1), pr));  // beta (v - p)
  Row<T> acc[4] = {zero_row<T>(), zero_row<T>(), zero_row<T>(), zero_row<T>()};
  int64_t i = 0;
  for (; i + 4 <= K; i += 4) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      Row<T> row = load_row(S + (i + r) * W);
      add_scaled(row, k[i + r], u);
      if (also) {  // the last step of a stream: its state goes out only
        __builtin_prefetch(also + (i + r) * also_ld + W, 1, 2);
        store_row(also + (i + r) * also_ld, row);
      } else {
        store_row(S + (i + r) * W, row);
      }
      if (kOutput) add_scaled(acc[r], scale * q[i + r], row);
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r) {
    if (i + r >= K) break;
    Row<T> row = load_row(S + (i + r) * W);
    add_scaled(row, k[i + r], u);
    if (also)  // the last step of a stream: its state goes out only
      store_row(also + (i + r) * also_ld, row);
    else
      store_row(S + (i + r) * W, row);
    if (kOutput) add_scaled(acc[r], scale * q[i + r], row);
  }
  if (kOutput) {
    T out[W];
    store_row(out, combine(acc));
    for (int64_t j = 0; j < p.width; ++j) o[j] = out[j];
  }
}

// The state after step t from S' = a S_{t-1} (Sp) and p = S'^T k (pr): dst = S' + k u^T, u = beta (v - p), the
// forward's arithmetic (backward's recomputation).
template <typename T>
inline void add_update(const DeltaPanel<T>& p, int64_t t, const Row<T>& pr, const T* Sp, T* dst) {
  const T* __restrict k = p.k + t * p.qk_stride;
  const Row<T> u = scale_row(p.beta[t * p.beta_stride], axpby(T(1), load_padded(p.v + t * p.v_stride, p.width), T(-1), pr));
  for (int64_t i = 0; i < p.K; ++i) {
    Row<T> row = load_row(Sp + i * W);
    add_scaled(row, k[i], u);
    store_row(dst + i * W, row);
  }
}

template <typename T>
inline void load_state(const T* src, int64_t row_stride, const DeltaPanel<T>& p, T* S) {
  for (int64_t i = 0; i < p.K; ++i) store_row(S + i * W, src ? load_padded(src + i * row_stride, p.width) : zero_row<T>());
}

template <typename T>
inline void store_state(const T* S, const DeltaPanel<T>& p, T* dst, int64_t row_stride) {
  if (p.width == W) {
    for (int64_t i = 0; i < p.K; ++i) store_row(dst + i * row_stride, load_row(S + i * W));
    return;
  }
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.width; ++j) dst[i * row_stride + j] = S[i * W + j];
}

// Dots of four rows with one vector each, summed by sum4's fixed tree.
template <typename T>
inline void dots4(const Vec<T>* x, T* out) {
  sum4(x[0], x[1], x[2], x[3], out);
}

// One backward step. Sp: the decayed state a S_{t-1} of step t, pr: its projection p = Sp^T k (both as the
// forward computed them); dS: the gradient of the state after the step on entry, before it on exit.
// work: K values. Rows go four at a time, so that sum4 adds up their dots together (rows past K are zero).
template <typename T>
inline void backward_step(const DeltaPanel<T>& p, int64_t t, const T* Sp, const Row<T>& pr, T* dS,
                          const T* grad_o, int64_t o_stride, const DeltaGrads<T>& g, T* __restrict work) {
  const int64_t K = p.K;
  const T* __restrict k = p.k + t * p.qk_stride;
  const T* __restrict q = p.q + t * p.qk_stride;
  const Decay<T> a(p, t);
  const T scale = p.scale, beta = p.beta[t * p.beta_stride];
  const Row<T> v = load_padded(p.v + t * p.v_stride, p.width);
  const Row<T> vmp = axpby(T(1), v, T(-1), pr);
  const Row<T> u = scale_row(beta, vmp);
  const Row<T> go = grad_o ? load_padded(grad_o + t * o_stride, p.width) : zero_row<T>();

  // Through o_t = S_t^T (scale q) and S_t = S' + k u^T.
  T* __restrict dq = g.dq + t * g.dqk_stride;
  T* __restrict dk_partial = work;
  Row<T> du_acc[4] = {zero_row<T>(), zero_row<T>(), zero_row<T>(), zero_row<T>()};
  for (int64_t i0 = 0; i0 < K; i0 += 4) {
    Vec<T> xq[4], xk[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const int64_t i = i0 + r;
      xq[r] = xk[r] = Vec<T>{};
      if (i >= K) continue;
      const T ki = k[i];
      Row<T> st = load_row(Sp + i * W);  // S_t = S' + k u^T, as the forward added it
      add_scaled(st, ki, u);
      Row<T> d = load_row(dS + i * W);
      add_scaled(d, scale * q[i], go);
      store_row(dS + i * W, d);
      xq[r] = dot_lanes(st, go);
      xk[r] = dot_lanes(d, u);
      add_scaled(du_acc[r], ki, d);
    }
    T sq[4], sk[4];
    dots4(xq, sq);
    dots4(xk, sk);
    for (int r = 0; r < 4 && i0 + r < K; ++r) {
      dq[i0 + r] += scale * sq[r];
      dk_partial[i0 + r] = sk[r];
    }
  }
  const Row<T> du = combine(du_acc);
  g.dbeta[t * g.dbeta_stride] += dot(du, vmp);
  const Row<T> dp = scale_row(-beta, du);
  {
    T buf[W];
    store_row(buf, scale_row(beta, du));
    T* dv = g.dv + t * g.dv_stride;
    for (int64_t j = 0; j < p.width; ++j) dv[j] = buf[j];
  }

  // Through p = S'^T k and S' = a S_{t-1}.
  T* __restrict dk = g.dk + t * g.dqk_stride;
  T* __restrict dg = g.dg ? g.dg + t * g.dg_stride : nullptr;
  const bool per_key = p.per_key;
  T dg_sum = T(0);
  for (int64_t i0 = 0; i0 < K; i0 += 4) {
    Vec<T> xk[4], xg[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const int64_t i = i0 + r;
      xk[r] = xg[r] = Vec<T>{};
      if (i >= K) continue;
      const T ai = a[i];
      const Row<T> sp = load_row(Sp + i * W);
      const Row<T> dsp = axpby(T(1), load_row(dS + i * W), k[i], dp);
      xk[r] = dot_lanes(sp, dp);
      xg[r] = dot_lanes(sp, dsp);
      store_row(dS + i * W, scale_row(ai, dsp));
    }
    T sk[4], sg[4];
    dots4(xk, sk);
    dots4(xg, sg);
    for (int r = 0; r < 4 && i0 + r < K; ++r) {
      dk[i0 + r] += dk_partial[i0 + r] + sk[r];
      if (per_key && dg != nullptr)
        dg[i0 + r] += sg[r];
      else
        dg_sum += sg[r];
    }
  }
  if (dg != nullptr && !per_key) dg[0] += dg_sum;
}

}  // namespace delta

template <typename T>
void delta_rule_forward_kernel(const DeltaPanel<T>& p, const DeltaStates<T>& s, T* last, T* o, int64_t o_stride,
                               T* workspace) {
  T* S = workspace;
  // A full panel reads its initial state in the first step and writes its last state in the last step
  // (inference: no checkpoints, whose first one is the initial state).
  const bool full = p.width == delta::W && s.checkpoints == nullptr;
  const bool read_init = full && s.init != nullptr;
  if (!read_init) delta::load_state(s.init, s.row_stride, p, S);
  for (int64_t t = 0; t < p.steps; ++t) {
    const int64_t global = p.t0 + t;
    if (s.checkpoints != nullptr && global % kChunk == 0)
      delta::store_state(S, p, s.checkpoints + (global / kChunk) * s.chunk_stride, s.row_stride);
    delta::forward_step<true>(p, t, S, o + t * o_stride, read_init && t == 0 ? s.init : nullptr, s.row_stride,
                              full && t + 1 == p.steps ? last : nullptr, s.row_stride);
  }
  if (!full || p.steps == 0) delta::store_state(S, p, last, s.row_stride);
}

template <typename T>
void delta_rule_backward_kernel(const DeltaPanel<T>& p, const DeltaStates<T>& s, const T* grad_o, int64_t o_stride,
                                const T* grad_last, const DeltaGrads<T>& g, T* dS, int64_t begin, int64_t end,
                                T* workspace) {
  const int64_t KW = p.K * delta::W;
  T* cur = workspace;                    // the state during the chunk's recomputation
  T* decayed = cur + KW;                 // kChunk states a S_{t-1}, one per step of the chunk
  T* projected = decayed + kChunk * KW;  // kChunk rows p_t
  T* work = projected + kChunk * delta::W;
  if (end == p.steps) delta::load_state(grad_last, s.row_stride, p, dS);
  if (begin < end) {
    if (begin == 0)
      delta::load_state(s.init, s.row_stride, p, cur);
    else
      delta::load_state(s.checkpoints + ((p.t0 + begin) / kChunk) * s.chunk_stride, s.row_stride, p, cur);
    // The chunk's steps again, with the forward's arithmetic, keeping a S_{t-1} and p_t of each.
    for (int64_t t = begin; t < end; ++t) {
      T* Sp = decayed + (t - begin) * KW;
      const delta::Row<T> pr =
          delta::decay_and_project<true>(p.K, delta::Decay<T>(p, t), p.k + t * p.qk_stride, cur, Sp);
      delta::store_row(projected + (t - begin) * delta::W, pr);
      if (t + 1 < end) delta::add_update(p, t, pr, Sp, cur);
    }
    for (int64_t t = end - 1; t >= begin; --t)
      delta::backward_step(p, t, decayed + (t - begin) * KW, delta::load_row(projected + (t - begin) * delta::W), dS,
                           grad_o, o_stride, g, work);
  }
  if (begin == 0) delta::store_state(dS, p, g.d_init, s.row_stride);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
