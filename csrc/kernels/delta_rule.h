#pragma once
// The gated delta rule (Gated DeltaNet) of one panel of a value head's state, on raw pointers: no
// at::Tensor, no allocation (the API and the recurrence are in scans.h). A panel is kDeltaWidth columns of
// the (K, V) state kept in a contiguous (K, kDeltaWidth) buffer, so it stays in L1 across the time loop;
// columns past the panel's width are zero and stay zero (their v is 0, so their u is 0).
//
// Per step: pass 1 decays each row and accumulates p = S'^T k; pass 2 adds k u^T and accumulates
// o = S^T (scale q). Rows are explicit 32-byte vectors; sums over rows run in four accumulators combined in
// a fixed order: the same bits for any thread count, and in the avx2 and avx512 builds. Backward holds the
// panel transposed (a column per contiguous run of K values), recomputes a chunk's states from the one
// saved before it and walks the chunk in reverse; its sums over rows are vector multiply-adds across the
// panel's columns, and its few sums across lanes run through sum4's fixed shuffle tree.
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

// Four row accumulators combined as (0 + 1) + (2 + 3).
template <typename T>
inline Row<T> combine(const Row<T>* acc) {
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = (acc[0].v[n] + acc[1].v[n]) + (acc[2].v[n] + acc[3].v[n]);
  return r;
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

// ---- Backward, on transposed panels. Column j of a panel's state is kept as Kp contiguous values
// (delta_padded_rows(K): rows past K are zero), so the backward's sums over a column's key rows (dq, both
// terms of dk, dg) are vector multiply-adds across the panel's columns, and only du and the recomputed p
// (one value per column) are sums across a vector's lanes. The recomputation repeats the forward's
// arithmetic in this layout, but sums p's rows in another order (lanes, then a tree): its states can differ
// from the forward's in their last bits, and the gradients are those of the recomputed steps.

// Rows go kBlocks vectors at a time across every column (their accumulators in registers: 32 vector
// registers in the avx512 build, 16 in the others). No sum depends on kBlocks: every build gives the same
// bits.
#if defined(__AVX512F__)
constexpr int kBlocks = 4;
#else
constexpr int kBlocks = 2;
#endif
static_assert(kDeltaRowPad % (4 * 8) == 0, "transposed columns are whole groups of four vectors");

template <typename T>
inline Vec<T> vec_at(const T* p) {
  return *reinterpret_cast<const typename UnalignedVecOf<T>::type*>(p);
}
template <typename T>
inline void vec_store(T* p, const Vec<T>& x) {
  *reinterpret_cast<typename UnalignedVecOf<T>::type*>(p) = x;
}
// x in every lane (one broadcast: a loop over the lanes compiles to a chain of inserts).
template <typename T>
inline Vec<T> splat(T x) {
  if constexpr (Tile<T>::kLanes == 8)
    return Vec<T>{x, x, x, x, x, x, x, x};
  else
    return Vec<T>{x, x, x, x};
}

// n vectors of x, one after the other.
template <int n, typename T>
inline void load_block(const T* x, Vec<T>* out) {
  for (int b = 0; b < n; ++b) out[b] = vec_at(x + b * Tile<T>::kLanes);
}

// Step t's k, q and decay as Kp values each: zero, zero and one past K, and the decay one value per row
// whatever the gate (one per head: repeated; none: ones). The inputs themselves where they are that
// already, else copies in buf (3 Kp values).
template <typename T>
struct StepRows {
  const T *k, *q, *a;
};

template <typename T>
inline StepRows<T> step_rows(const DeltaPanel<T>& p, int64_t t, int64_t Kp, T* buf) {
  const int64_t K = p.K;
  const T *k = p.k + t * p.qk_stride, *q = p.q + t * p.qk_stride;
  const T* a = p.decay != nullptr && p.per_key ? p.decay + t * p.decay_stride : nullptr;
  T *kb = buf, *qb = buf + Kp, *ab = buf + 2 * Kp;
  if (a == nullptr) std::fill(ab, ab + Kp, p.decay != nullptr ? p.decay[t * p.decay_stride] : T(1));
  if (K == Kp) return {k, q, a != nullptr ? a : ab};
  for (int64_t i = 0; i < Kp; ++i) {
    kb[i] = i < K ? k[i] : T(0);
    qb[i] = i < K ? q[i] : T(0);
    if (a != nullptr) ab[i] = i < K ? a[i] : T(1);
  }
  return {kb, qb, ab};
}

// A panel's state (rows at src + i * row_stride, width values; src nullptr: zeros) as transposed columns,
// and back.
template <typename T>
inline void load_columns(const T* src, int64_t row_stride, const DeltaPanel<T>& p, int64_t Kp, T* C) {
  std::fill(C, C + W * Kp, T(0));
  if (src == nullptr) return;
  for (int64_t j = 0; j < p.width; ++j)
    for (int64_t i = 0; i < p.K; ++i) C[j * Kp + i] = src[i * row_stride + j];
}

template <typename T>
inline void store_columns(const T* C, const DeltaPanel<T>& p, int64_t Kp, T* dst, int64_t row_stride) {
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.width; ++j) dst[i * row_stride + j] = C[j * Kp + i];
}

// Step t of the recomputation on transposed columns: Sp = a_t S_{t-1} (kept) and p_j = Sp_j . k_t (pr), four
// columns at a time, their lanes summed together by sum4. With kUpdate, S_{t-1} = prev + k_{t-1} u_{t-1}^T
// (prev: step t - 1's Sp, uprev its u) is made on the way and never stored; without, S_{t-1} is prev.
// Leaves u_t in u.
template <bool kUpdate, typename T>
inline void recompute_step(const DeltaPanel<T>& p, int64_t t, const StepRows<T>& r, const T* kprev, const T* uprev,
                           int64_t Kp, const T* prev, T* Sp, T* pr, T* u) {
  constexpr int64_t L = Tile<T>::kLanes;
  for (int64_t j0 = 0; j0 < W; j0 += 4) {
    Vec<T> acc[4] = {Vec<T>{}, Vec<T>{}, Vec<T>{}, Vec<T>{}}, up[4];
    for (int c = 0; c < 4; ++c) up[c] = kUpdate ? splat(uprev[j0 + c]) : Vec<T>{};
    for (int64_t i = 0; i < Kp; i += L) {
      const Vec<T> kv = vec_at(r.k + i), av = vec_at(r.a + i), kp = kUpdate ? vec_at(kprev + i) : Vec<T>{};
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const Vec<T> s = kUpdate ? vec_at(prev + (j0 + c) * Kp + i) + up[c] * kp : vec_at(prev + (j0 + c) * Kp + i);
        const Vec<T> x = av * s;
        vec_store(Sp + (j0 + c) * Kp + i, x);
        acc[c] += kv * x;
      }
    }
    sum4(acc[0], acc[1], acc[2], acc[3], pr + j0);
  }
  const T beta = p.beta[t * p.beta_stride];
  const T* v = p.v + t * p.v_stride;
  for (int64_t j = 0; j < W; ++j) u[j] = beta * ((j < p.width ? v[j] : T(0)) - pr[j]);
}

// One backward step on transposed columns. Sp: the decayed state a S_{t-1} of step t and pr its projection
// p = Sp^T k, as recompute_step made them; dS: the gradient of the state after the step on entry, before it
// on exit. acc: 3 Kp values.
template <typename T>
inline void backward_step(const DeltaPanel<T>& p, int64_t t, const StepRows<T>& r, int64_t Kp, const T* Sp,
                          const T* pr, T* dS, const T* grad_o, int64_t o_stride, int64_t o_col_stride,
                          const DeltaGrads<T>& g, T* __restrict acc) {
  constexpr int64_t L = Tile<T>::kLanes, B = kBlocks;
  const T scale = p.scale, beta = p.beta[t * p.beta_stride];
  const T* v = p.v + t * p.v_stride;
  const T* go = grad_o != nullptr ? grad_o + t * o_stride : nullptr;
  T u[W], vmp[W], gj[W], sgj[W];
  for (int64_t j = 0; j < W; ++j) {
    vmp[j] = (j < p.width ? v[j] : T(0)) - pr[j];
    u[j] = beta * vmp[j];
    gj[j] = go != nullptr && j < p.width ? go[j * o_col_stride] : T(0);
    sgj[j] = scale * gj[j];
  }
  T *dqa = acc, *dka = acc + Kp, *dga = acc + 2 * Kp;
  if (t > 0) {  // the next (earlier) step's rows, while this one runs
    if (go != nullptr) __builtin_prefetch(go - o_stride, 0, 3);
    __builtin_prefetch(v - p.v_stride, 0, 3);
    const T *kn = p.k + (t - 1) * p.qk_stride, *qn = p.q + (t - 1) * p.qk_stride;
    T *dqn = g.dq + (t - 1) * g.dqk_stride, *dkn = g.dk + (t - 1) * g.dqk_stride;
    for (int64_t i = 0; i < p.K; i += 64 / sizeof(T)) {
      __builtin_prefetch(kn + i, 0, 3);
      __builtin_prefetch(qn + i, 0, 3);
      __builtin_prefetch(dqn + i, 1, 3);
      __builtin_prefetch(dkn + i, 1, 3);
    }
  }

  // Pass 1, through o_t = S_t^T (scale q) and S_t = S' + k u^T: dS += (scale q) go^T; dq = S_t go =
  // S' go + k (u . go), dk = dS u, du = dS^T k.
  Vec<T> du_lanes[W];
  for (auto& x : du_lanes) x = Vec<T>{};
  for (int64_t i0 = 0; i0 < Kp; i0 += B * L) {
    Vec<T> kv[B], qv[B], aq[B] = {}, ak[B] = {};
    load_block<B>(r.k + i0, kv);
    load_block<B>(r.q + i0, qv);
    for (int64_t j = 0; j < W; ++j) {
      const Vec<T> uj = splat(u[j]), goj = splat(gj[j]), sgoj = splat(sgj[j]);
      const T* sp = Sp + j * Kp + i0;
      T* d = dS + j * Kp + i0;
      Vec<T> du = du_lanes[j];
      // The next row block's lines of S' (from L2: the chunk's states do not fit in L1).
      __builtin_prefetch(sp + B * L, 0, 3);
      __builtin_prefetch(sp + B * L + 64 / sizeof(T), 0, 3);
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) {
        const Vec<T> dd = vec_at(d + b * L) + sgoj * qv[b];
        vec_store(d + b * L, dd);
        aq[b] += goj * vec_at(sp + b * L);
        ak[b] += uj * dd;
        du += kv[b] * dd;
      }
      du_lanes[j] = du;
    }
    for (int b = 0; b < B; ++b) {
      vec_store(dqa + i0 + b * L, aq[b]);
      vec_store(dka + i0 + b * L, ak[b]);
    }
  }
  T du[W], dp[W];
  for (int64_t j0 = 0; j0 < W; j0 += 4)
    sum4(du_lanes[j0], du_lanes[j0 + 1], du_lanes[j0 + 2], du_lanes[j0 + 3], du + j0);
  T dbeta = T(0);
  for (int64_t j = 0; j < W; ++j) {
    dbeta += du[j] * vmp[j];
    dp[j] = -beta * du[j];
  }
  g.dbeta[t * g.dbeta_stride] += dbeta;
  T* dv = g.dv + t * g.dv_stride;
  for (int64_t j = 0; j < p.width; ++j) dv[j] = beta * du[j];

  // Pass 2, through p = S'^T k and S' = a S_{t-1}: dS' = dS + k dp^T, dk += S' dp, da = (S' . dS') per row,
  // dS = a dS'.
  Vec<T> dg_lanes = Vec<T>{};
  for (int64_t i0 = 0; i0 < Kp; i0 += B * L) {
    Vec<T> kv[B], av[B], ak[B] = {}, ag[B] = {};
    load_block<B>(r.k + i0, kv);
    load_block<B>(r.a + i0, av);
    for (int64_t j = 0; j < W; ++j) {
      const Vec<T> dpj = splat(dp[j]);
      const T* sp = Sp + j * Kp + i0;
      T* d = dS + j * Kp + i0;
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) {
        const Vec<T> s = vec_at(sp + b * L);
        const Vec<T> dsp = vec_at(d + b * L) + dpj * kv[b];
        ak[b] += dpj * s;
        ag[b] += s * dsp;
        vec_store(d + b * L, av[b] * dsp);
      }
    }
    for (int b = 0; b < B; ++b) {
      vec_store(dka + i0 + b * L, vec_at(dka + i0 + b * L) + ak[b]);
      if (g.dg != nullptr && p.per_key) vec_store(dga + i0 + b * L, ag[b]);
      dg_lanes += ag[b];
    }
  }
  T* dq = g.dq + t * g.dqk_stride;
  T* dk = g.dk + t * g.dqk_stride;
  T ug = T(0);
  for (int64_t j = 0; j < W; ++j) ug += u[j] * gj[j];
  for (int64_t i = 0; i < p.K; ++i) {
    dq[i] += scale * (dqa[i] + r.k[i] * ug);
    dk[i] += dka[i];
  }
  if (g.dg == nullptr) return;
  T* dg = g.dg + t * g.dg_stride;
  if (p.per_key) {
    for (int64_t i = 0; i < p.K; ++i) dg[i] += dga[i];
  } else {
    T s[4];
    sum4(dg_lanes, Vec<T>{}, Vec<T>{}, Vec<T>{}, s);
    dg[0] += s[0];
  }
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
                                int64_t o_col_stride, const T* grad_last, bool ends_sequence, bool starts_sequence,
                                const DeltaGrads<T>& g, T* dS, T* workspace) {
  const int64_t Kp = delta_padded_rows(p.K), WK = delta::W * Kp, steps = p.steps;
  T* before = workspace;                   // the state before the chunk
  T* decayed = before + WK;                // kChunk states a S_{t-1}, one per step of the chunk
  T* projected = decayed + kChunk * WK;    // kChunk rows p_t
  T* rows = projected + kChunk * delta::W;  // two steps' StepRows
  T* acc = rows + 6 * Kp;
  if (ends_sequence) delta::load_columns(grad_last, s.row_stride, p, Kp, dS);
  if (steps > 0) {
    delta::load_columns(starts_sequence ? s.init : s.checkpoints + (p.t0 / kChunk) * s.chunk_stride, s.row_stride,
                        p, Kp, before);
    // The chunk's steps again, keeping a S_{t-1} and p_t of each.
    T u[2][delta::W];
    delta::StepRows<T> prev = delta::step_rows(p, 0, Kp, rows);
    delta::recompute_step<false, T>(p, 0, prev, nullptr, nullptr, Kp, before, decayed, projected, u[0]);
    for (int64_t t = 1; t < steps; ++t) {
      const delta::StepRows<T> r = delta::step_rows(p, t, Kp, rows + (t % 2) * 3 * Kp);
      delta::recompute_step<true, T>(p, t, r, prev.k, u[(t - 1) % 2], Kp, decayed + (t - 1) * WK, decayed + t * WK,
                                     projected + t * delta::W, u[t % 2]);
      prev = r;
    }
    for (int64_t t = steps - 1; t >= 0; --t)
      delta::backward_step(p, t, delta::step_rows(p, t, Kp, rows), Kp, decayed + t * WK, projected + t * delta::W, dS,
                           grad_o, o_stride, o_col_stride, g, acc);
  }
  if (starts_sequence) delta::store_columns(dS, p, Kp, g.d_init, s.row_stride);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
