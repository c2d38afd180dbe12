#pragma once
// The gated delta rule (Gated DeltaNet) of one panel of a value head's state, on raw pointers: no
// at::Tensor, no allocation (the API and the recurrence are in scans.h). A panel is kDeltaWidth columns of
// the (K, V) state kept in a contiguous (K, kDeltaWidth) buffer, so it stays in L1 across the time loop;
// columns past the panel's width are zero and stay zero (their v is 0, so their u is 0).
//
// Per step: pass 1 accumulates p = S'^T k (decaying each row only where the decay is per key or the
// running factor that keeps a scalar decay out of the state leaves its bounds); pass 2 adds k u^T and
// accumulates o = S^T (scale q). Rows are explicit vectors; sums over rows run in four accumulators
// combined in a fixed order: the same bits for any thread count, and in the avx2 and avx512 builds.
// Backward holds the panel transposed (a column per contiguous run of K values), recomputes a chunk's
// states from the one saved before it and walks the chunk in reverse; its sums over rows are vector
// multiply-adds across the panel's columns, and its few sums across lanes run in two chains and then
// through sum4's fixed shuffle tree.
//
// Included by capability-specific translation units (scans_instances.h): everything lives in the
// capability namespace TRE_CPU_CAPABILITY.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/scans.h"       // DeltaPanel, kChunk
#include "kernels/small_gemm.h"  // Vec, sum4

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

namespace delta {

constexpr int64_t W = kDeltaWidth;

// A panel row is kRowVecs vectors of kRowBytes (GCC vector extensions: one 64-byte vector per float row
// in the avx512 build, 32-byte ones elsewhere). Everything done to a row is lane by lane, so the vectors'
// width never changes a result.
#if defined(__AVX512F__)
constexpr int kRowBytes = 64;
#else
constexpr int kRowBytes = 32;
#endif
template <typename T>
struct RowVecOf {
  typedef T type __attribute__((vector_size(kRowBytes)));
  // Loads and stores typed as vectors of T (not memcpy, whose char access may alias anything and so makes
  // the compiler reload every pointer after a store), at T's alignment.
  typedef T unaligned __attribute__((vector_size(kRowBytes), aligned(sizeof(T))));
};
template <typename T>
using RowVec = typename RowVecOf<T>::type;
template <typename T>
constexpr int kRowLanes = static_cast<int>(kRowBytes / sizeof(T));
template <typename T>
constexpr int kRowVecs = static_cast<int>(W / kRowLanes<T>);
static_assert(W % (64 / sizeof(float)) == 0, "a panel row is whole 64-byte vectors of float and of double");

template <typename T>
struct Row {
  RowVec<T> v[kRowVecs<T>];
};

template <typename T>
inline Row<T> load_row(const T* p) {
  using U = typename RowVecOf<T>::unaligned;
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = *reinterpret_cast<const U*>(p + n * kRowLanes<T>);
  return r;
}

template <typename T>
inline void store_row(T* p, const Row<T>& r) {
  using U = typename RowVecOf<T>::unaligned;
  for (int n = 0; n < kRowVecs<T>; ++n) *reinterpret_cast<U*>(p + n * kRowLanes<T>) = r.v[n];
}

template <typename T>
inline Row<T> zero_row() {
  Row<T> r;
  for (auto& v : r.v) v = RowVec<T>{};
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

// Row sums run in kRowAccs accumulators (rows i % kRowAccs), combined as (0 + 1) + (2 + 3). (Eight
// accumulators, for shorter chains of multiply-adds, measured slower.)
constexpr int kRowAccs = 4;
template <typename T>
inline Row<T> combine(const Row<T>* acc) {
  static_assert(kRowAccs == 4, "combine, and the loops' unroll pragmas, are written for four accumulators");
  Row<T> r;
  for (int n = 0; n < kRowVecs<T>; ++n) r.v[n] = (acc[0].v[n] + acc[1].v[n]) + (acc[2].v[n] + acc[3].v[n]);
  return r;
}

// A step's decays: a[i * step] for key row i (step 1 per key, 0 for one value for every row).
template <typename T>
struct Decay {
  const T* a;
  int64_t step;
  T operator[](int64_t i) const { return a[i * step]; }
};

// The running decay factor. A scalar decay (one per head, or none) is kept out of the state while the
// product f of the decays since it was last multiplied in stays in [2^-20, 2^20]: the rows hold S / f, and
// a step is S' = a S (f *= a; no multiply), p = f (rows^T k), rows += k (u / f)^T, o = f rows^T (scale q).
// That is one multiply per state element and step fewer than decaying the rows, everywhere the decays are
// scalar. Per-key decays are multiplied into the rows at every step (f = 1).
constexpr double kFactorBound = 1048576.0;  // 2^20
template <typename T>
inline bool keeps_factor(T f) {
  return f >= T(1.0 / kFactorBound) && f <= T(kFactorBound);  // false for NaN: multiplied in, as before
}
// The scalar decay of step t (1 without gate; per-key decays are not scalar).
template <typename T>
inline T scalar_decay(const DeltaPanel<T>& p, int64_t t) {
  return p.decay != nullptr ? p.decay[t * p.decay_stride] : T(1);
}

// A panel's values at one step, padded to W with zeros.
template <typename T>
inline Row<T> load_padded(const T* src, int64_t width) {
  if (width == W) return load_row(src);
  T buf[W];
  for (int64_t j = 0; j < W; ++j) buf[j] = j < width ? src[j] : T(0);
  return load_row(buf);
}

// Pass 1 on the state S before step t (rows at S + i * ld): returns p = (a S)^T k (kDecay; else S^T k);
// with kWrite, a S (or S) goes to the panel buffer Sp (which may be S). kRowAccs rows per iteration, one
// accumulator each (the tail's rows go to the first ones).
template <bool kWrite, bool kDecay, typename T>
inline Row<T> decay_and_project(int64_t K, const Decay<T>& a, const T* __restrict k, const T* S, T* Sp,
                                int64_t ld = W) {
  Row<T> acc[kRowAccs];
  for (auto& x : acc) x = zero_row<T>();
  int64_t i = 0;
  for (; i + kRowAccs <= K; i += kRowAccs) {
#pragma GCC unroll 4
    for (int r = 0; r < kRowAccs; ++r) {
      // Rows of a state read in place (ld > W) are a line apart: ask for the next panel's line of the row
      // (to the L2 cache) while this one's is waited for. A hint only: it never faults.
      if (ld != W) __builtin_prefetch(S + (i + r) * ld + W, 0, 2);
      const Row<T> sp = kDecay ? scale_row(a[i + r], load_row(S + (i + r) * ld)) : load_row(S + (i + r) * ld);
      add_scaled(acc[r], k[i + r], sp);
      if (kWrite) store_row(Sp + (i + r) * W, sp);
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < kRowAccs - 1; ++r) {
    if (i + r >= K) break;
    const Row<T> sp = kDecay ? scale_row(a[i + r], load_row(S + (i + r) * ld)) : load_row(S + (i + r) * ld);
    add_scaled(acc[r], k[i + r], sp);
    if (kWrite) store_row(Sp + (i + r) * W, sp);
  }
  return combine(acc);
}

// One forward step on the panel S (in place), whose state is f times its rows; with kOutput, o (width
// values) gets S_t^T (scale q). The step keeps its decay out of the rows (f *= a) unless settle, the
// decays are per key or f would leave its bounds; else it multiplies f a into the rows (f = 1). A full
// panel (width W) can read the rows before the step from src (rows at src + i * src_ld) instead of S, and
// write them after it to also (rows at also + i * also_ld) instead of S: a stream's state read and written
// in place, without separate passes to load and store it.
template <bool kOutput, typename T>
inline void forward_step(const DeltaPanel<T>& p, int64_t t, T* S, T& f, bool settle, T* o, const T* src = nullptr,
                         int64_t src_ld = W, T* also = nullptr, int64_t also_ld = 0) {
  const int64_t K = p.K;
  const T* __restrict k = p.k + t * p.qk_stride;
  const T* __restrict q = p.q + t * p.qk_stride;
  const T scale = p.scale, beta = p.beta[t * p.beta_stride];
  const Row<T> v = load_padded(p.v + t * p.v_stride, p.width);
  const T next = p.per_key ? f : f * scalar_decay(p, t);
  const bool keep = !settle && !p.per_key && keeps_factor(next);
  Row<T> pr;
  if (keep) {
    const Decay<T> none{nullptr, 0};
    pr = scale_row(next, src ? decay_and_project<true, false>(K, none, k, src, S, src_ld)
                             : decay_and_project<false, false>(K, none, k, S, S));
  } else {
    const Decay<T> a = p.per_key ? Decay<T>{p.decay + t * p.decay_stride, 1} : Decay<T>{&next, 0};
    pr = decay_and_project<true, true>(K, a, k, src ? src : S, S, src ? src_ld : W);
  }
  f = keep ? next : T(1);
  const Row<T> u = scale_row(beta / f, axpby(T(1), v, T(-1), pr));  // beta (v - p) / f
  Row<T> acc[kRowAccs];
  for (auto& x : acc) x = zero_row<T>();
  int64_t i = 0;
  for (; i + kRowAccs <= K; i += kRowAccs) {
#pragma GCC unroll 4
    for (int r = 0; r < kRowAccs; ++r) {
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
  for (int r = 0; r < kRowAccs - 1; ++r) {
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
    store_row(out, scale_row(f, combine(acc)));
    for (int64_t j = 0; j < p.width; ++j) o[j] = out[j];
  }
}

template <typename T>
inline void load_state(const T* src, int64_t row_stride, const DeltaPanel<T>& p, T* S) {
  for (int64_t i = 0; i < p.K; ++i) store_row(S + i * W, src ? load_padded(src + i * row_stride, p.width) : zero_row<T>());
}

// The panel's rows times f to dst.
template <typename T>
inline void store_state(const T* S, const DeltaPanel<T>& p, T* dst, int64_t row_stride, T f = T(1)) {
  if (p.width == W) {
    for (int64_t i = 0; i < p.K; ++i) store_row(dst + i * row_stride, scale_row(f, load_row(S + i * W)));
    return;
  }
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.width; ++j) dst[i * row_stride + j] = f * S[i * W + j];
}

// ---- Backward, on transposed panels. Column j of a panel's state is kept as Kp contiguous values
// (delta_padded_rows(K): rows past K are zero), so the backward's sums over a column's key rows (dq, both
// terms of dk, dg) are vector multiply-adds across the panel's columns, and only du and the recomputed p
// (one value per column) are sums across a vector's lanes. The recomputation repeats the forward's
// arithmetic in this layout, but sums p's rows in another order (lanes, then a tree): its states can differ
// from the forward's in their last bits, and the gradients are those of the recomputed steps.

// The backward's vectors are the rows' (RowVec: 64 bytes in the avx512 build, 32 elsewhere), running
// down a column's key rows. Rows go kBlocks vectors at a time across every column (their accumulators in
// registers). A sum across rows runs in two chains, the 32-byte blocks of rows at
// even and at odd positions, added at the end and then across their lanes by sum4's fixed tree: a 64-byte
// vector's halves are the two chains (kChains = 1 accumulator), two 32-byte accumulators are (kChains = 2).
// No sum depends on the vectors' width or on kBlocks: the avx2 and avx512 builds give the same bits.
constexpr int kChains = kRowBytes == 64 ? 1 : 2;
constexpr int kBlocks = 2;
static_assert(kDeltaRowPad % (kBlocks * 64 / sizeof(float)) == 0, "transposed columns are whole row blocks");

template <typename T>
inline RowVec<T> vec_at(const T* p) {
  return *reinterpret_cast<const typename RowVecOf<T>::unaligned*>(p);
}
template <typename T>
inline void vec_store(T* p, const RowVec<T>& x) {
  *reinterpret_cast<typename RowVecOf<T>::unaligned*>(p) = x;
}
// x in every lane (one broadcast: a loop over the lanes compiles to a chain of inserts).
template <typename T, size_t... I>
inline RowVec<T> splat_lanes(T x, std::index_sequence<I...>) {
  return RowVec<T>{((void)I, x)...};
}
template <typename T>
inline RowVec<T> splat(T x) {
  return splat_lanes(x, std::make_index_sequence<kRowLanes<T>>{});
}

// n vectors of x, one after the other.
template <int n, typename T>
inline void load_block(const T* x, RowVec<T>* out) {
  for (int b = 0; b < n; ++b) out[b] = vec_at(x + b * kRowLanes<T>);
}

// A sum's kChains accumulators as one 32-byte vector: the even chain plus the odd one.
template <typename V>
inline auto join_chains(const V* c) {
  using T = std::decay_t<decltype(c[0][0])>;
  if constexpr (kChains == 2) {
    return Vec<T>(c[0] + c[1]);
  } else if constexpr (kRowLanes<T> == 16) {  // halves by shuffles, not through memory: c stays in registers
    return Vec<T>(__builtin_shufflevector(c[0], c[0], 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(c[0], c[0], 8, 9, 10, 11, 12, 13, 14, 15));
  } else {
    return Vec<T>(__builtin_shufflevector(c[0], c[0], 0, 1, 2, 3) + __builtin_shufflevector(c[0], c[0], 4, 5, 6, 7));
  }
}
// The dot of two columns of Kp values, in chains.
template <typename T>
inline void dot_chains(const T* x, const T* y, int64_t Kp, RowVec<T>* c) {
  constexpr int64_t L = kRowLanes<T>;
  for (int64_t i = 0; i < Kp; i += kChains * L)
    for (int h = 0; h < kChains; ++h) c[h] += vec_at(x + i + h * L) * vec_at(y + i + h * L);
}

// Step t's k, q and per-key decays as Kp values each: zero, zero and one past K (a: nullptr for a scalar
// decay). The inputs themselves where they are that already, else copies in buf (3 Kp values).
template <typename T>
struct StepRows {
  const T *k, *q, *a;
};

template <typename T>
inline StepRows<T> step_rows(const DeltaPanel<T>& p, int64_t t, int64_t Kp, T* buf) {
  const int64_t K = p.K;
  const T *k = p.k + t * p.qk_stride, *q = p.q + t * p.qk_stride;
  const T* a = p.decay != nullptr && p.per_key ? p.decay + t * p.decay_stride : nullptr;
  if (K == Kp) return {k, q, a};
  T *kb = buf, *qb = buf + Kp, *ab = buf + 2 * Kp;
  for (int64_t i = 0; i < Kp; ++i) {
    kb[i] = i < K ? k[i] : T(0);
    qb[i] = i < K ? q[i] : T(0);
    if (a != nullptr) ab[i] = i < K ? a[i] : T(1);
  }
  return {kb, qb, a != nullptr ? ab : nullptr};
}

// How a step applies its decay to a transposed panel: not at all (kept in the running factor), one scalar
// for every row, or one per key row (StepRows::a).
enum class Decays { kKept, kScalar, kRows };

// f(std::integral_constant<Decays, d>): a step's kernel for its way of decaying, chosen at run time.
template <typename F>
inline void with_decays(Decays d, const F& f) {
  switch (d) {
    case Decays::kKept: return f(std::integral_constant<Decays, Decays::kKept>{});
    case Decays::kScalar: return f(std::integral_constant<Decays, Decays::kScalar>{});
    case Decays::kRows: return f(std::integral_constant<Decays, Decays::kRows>{});
  }
}

// A panel's state (rows at src + i * row_stride, width values; src nullptr: zeros) as transposed columns,
// and back.
template <typename T>
inline void load_columns(const T* src, int64_t row_stride, const DeltaPanel<T>& p, int64_t Kp, T* C) {
  std::fill(C, C + W * Kp, T(0));
  if (src == nullptr) return;
  // Row by row (each row's values one or two lines, all of them asked for first: the rows are far apart in
  // memory and usually not in cache), scattered to the columns.
  for (int64_t i = 0; i < p.K; ++i) {
    __builtin_prefetch(src + i * row_stride, 0, 3);
    __builtin_prefetch(src + i * row_stride + p.width - 1, 0, 3);
  }
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.width; ++j) C[j * Kp + i] = src[i * row_stride + j];
}

template <typename T>
inline void store_columns(const T* C, const DeltaPanel<T>& p, int64_t Kp, T* dst, int64_t row_stride) {
  for (int64_t i = 0; i < p.K; ++i)
    for (int64_t j = 0; j < p.width; ++j) dst[i * row_stride + j] = C[j * Kp + i];
}

// Step t of the recomputation on transposed columns, as the forward's step with the running factor f:
// Sp = Y_t, where a_t S_{t-1} = f Y_t, and p_j = f (Y_t)_j . k_t (pr), four columns at a time, their lanes
// summed together by sum4. With kUpdate, Y_{t-1} + k_{t-1} w_{t-1}^T (prev: step t - 1's Y, wprev its w) is
// made on the way and never stored; without, prev. kDecay: whether it is multiplied by m (kScalar) or by
// the rows' decays (kRows) or kept (f: the product of the factor before and a_t). Leaves w_t = u_t / f in w.
template <bool kUpdate, Decays kDecay, typename T>
inline void recompute_step(const DeltaPanel<T>& p, int64_t t, const StepRows<T>& r, const T* kprev, const T* wprev,
                           int64_t Kp, const T* prev, T m, T f, T* Sp, T* pr, T* w) {
  constexpr int64_t L = kRowLanes<T>;
  using V = RowVec<T>;
  const V mv = splat(m);
  for (int64_t j0 = 0; j0 < W; j0 += 4) {
    V acc[4][kChains] = {}, up[4];
    for (int c = 0; c < 4; ++c) up[c] = kUpdate ? splat(wprev[j0 + c]) : V{};
    for (int64_t i0 = 0; i0 < Kp; i0 += kChains * L) {
#pragma GCC unroll 2
      for (int h = 0; h < kChains; ++h) {
        const int64_t i = i0 + h * L;
        const V kv = vec_at(r.k + i), kp = kUpdate ? vec_at(kprev + i) : V{};
        const V av = kDecay == Decays::kRows ? vec_at(r.a + i) : mv;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const V s = kUpdate ? vec_at(prev + (j0 + c) * Kp + i) + up[c] * kp : vec_at(prev + (j0 + c) * Kp + i);
          const V x = kDecay == Decays::kKept ? s : av * s;
          vec_store(Sp + (j0 + c) * Kp + i, x);
          acc[c][h] += kv * x;
        }
      }
    }
    sum4(join_chains(acc[0]), join_chains(acc[1]), join_chains(acc[2]), join_chains(acc[3]), pr + j0);
  }
  const T beta = p.beta[t * p.beta_stride];
  const T* v = p.v + t * p.v_stride;
  for (int64_t j = 0; j < W; ++j) {
    pr[j] *= f;
    w[j] = beta / f * ((j < p.width ? v[j] : T(0)) - pr[j]);
  }
}

// One backward step on transposed columns. Sp: Y_t, with a S_{t-1} = f Y_t, and pr its projection
// p = f Y_t^T k, as recompute_step made them; dS: e X, the gradient of the state after the step, in X on
// entry; on exit X holds the gradient of the state before the step over e a_t (kKept), or that gradient
// itself (kScalar: m = e a_t; kRows: e = 1). acc: 3 Kp values.
//
// The gradient of the log decays, dL/dg_t = S' . dS' per row (summed over the rows for a scalar gate), is a
// multiply-add per state element (kStateSum: into g.dg). A scalar gate's has another form: with G_t the sum
// of the chunk's log decays up to t, S_t = exp(G_t) R_t where R follows the same recurrence without decay
// from q exp(G_t) and v exp(-G_t), so dL/dG_t = q_t . dq_t - v_t . dv_t (+ S . dS at the chunk's end) and
// dL/dg_t is the sum of those from t to the chunk's end. Without kStateSum a scalar gate's step leaves
// q . dq - v . dv (this panel's share) in *dG for that sum.
template <Decays kDecay, bool kStateSum, typename T>
inline void backward_step(const DeltaPanel<T>& p, int64_t t, const StepRows<T>& r, int64_t Kp, const T* Sp, T f,
                          const T* pr, T* dS, T e, T m, const T* grad_o, int64_t o_stride, int64_t o_col_stride,
                          const DeltaGrads<T>& g, T* __restrict acc, T* dG) {
  constexpr int64_t L = kRowLanes<T>, B = kBlocks;
  using V = RowVec<T>;
  const T scale = p.scale, beta = p.beta[t * p.beta_stride];
  const T* v = p.v + t * p.v_stride;
  const T* go = grad_o != nullptr ? grad_o + t * o_stride : nullptr;
  T u[W], vmp[W], gj[W], sgj[W], ue[W];
  for (int64_t j = 0; j < W; ++j) {
    vmp[j] = (j < p.width ? v[j] : T(0)) - pr[j];
    u[j] = beta * vmp[j];
    ue[j] = u[j] * e;
    gj[j] = go != nullptr && j < p.width ? go[j * o_col_stride] : T(0);
    sgj[j] = scale * gj[j] / e;
  }
  T *dqa = acc, *dka = acc + Kp, *dga = acc + 2 * Kp;
  if (t > 0) {  // the next (earlier) step's rows, while this one runs
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
  // f Y go + k (u . go), dk = dS u, du = dS^T k (dS = e X: e goes into the scalars).
  // du per column in its two chains (kChains accumulators).
  V du_lanes[W][kChains] = {};
  for (int64_t i0 = 0; i0 < Kp; i0 += B * L) {
    V kv[B], qv[B], aq[B] = {}, ak[B] = {};
    load_block<B>(r.k + i0, kv);
    load_block<B>(r.q + i0, qv);
    for (int64_t j = 0; j < W; ++j) {
      const V uj = splat(ue[j]), goj = splat(gj[j]), sgoj = splat(sgj[j]);
      const T* sp = Sp + j * Kp + i0;
      T* d = dS + j * Kp + i0;
      V du[kChains];
      for (int h = 0; h < kChains; ++h) du[h] = du_lanes[j][h];
      // The next row block's lines of S' (from L2: the chunk's states do not fit in L1).
      __builtin_prefetch(sp + B * L, 0, 3);
      __builtin_prefetch(sp + B * L + 64 / sizeof(T), 0, 3);
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) {
        const V dd = vec_at(d + b * L) + sgoj * qv[b];
        vec_store(d + b * L, dd);
        aq[b] += goj * vec_at(sp + b * L);
        ak[b] += uj * dd;
        du[b % kChains] += kv[b] * dd;
      }
      for (int h = 0; h < kChains; ++h) du_lanes[j][h] = du[h];
    }
    for (int b = 0; b < B; ++b) {
      vec_store(dqa + i0 + b * L, aq[b]);
      vec_store(dka + i0 + b * L, ak[b]);
    }
  }
  T du[W], dp[W];
  for (int64_t j0 = 0; j0 < W; j0 += 4)
    sum4(join_chains(du_lanes[j0]), join_chains(du_lanes[j0 + 1]), join_chains(du_lanes[j0 + 2]),
         join_chains(du_lanes[j0 + 3]), du + j0);
  T dbeta = T(0), dpe[W], dpf[W];
  for (int64_t j = 0; j < W; ++j) {
    du[j] *= e;
    dbeta += du[j] * vmp[j];
    dp[j] = -beta * du[j];
    dpe[j] = dp[j] / e;
    dpf[j] = dp[j] * f;
  }
  g.dbeta[t * g.dbeta_stride] += dbeta;
  T* dv = g.dv + t * g.dv_stride;
  T vdv = T(0);
  for (int64_t j = 0; j < p.width; ++j) {
    dv[j] = beta * du[j];
    vdv += v[j] * dv[j];
  }

  // Pass 2, through p = S'^T k and S' = a S_{t-1}: dS' = dS + k dp^T, dk += S' dp, per-key decays
  // da = (S' . dS') per row, dS = a dS' (kept out of X as e a_t, or multiplied in).
  constexpr bool kRowGate = kDecay == Decays::kRows;
  constexpr bool kSums = kStateSum || kRowGate;  // per-key decays' gradients are always sums over the state
  V dg_lanes[kChains] = {};
  const V mv = splat(m);
  for (int64_t i0 = 0; i0 < Kp; i0 += B * L) {
    V kv[B], av[B], ak[B] = {}, ag[B] = {};
    load_block<B>(r.k + i0, kv);
    if (kDecay == Decays::kRows) load_block<B>(r.a + i0, av);
    for (int64_t j = 0; j < W; ++j) {
      const V dpj = splat(dpe[j]), dfj = splat(dpf[j]);
      const T* sp = Sp + j * Kp + i0;
      T* d = dS + j * Kp + i0;
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) {
        const V s = vec_at(sp + b * L);
        const V dsp = vec_at(d + b * L) + dpj * kv[b];
        ak[b] += dfj * s;
        if (kSums) ag[b] += s * dsp;
        vec_store(d + b * L, kDecay == Decays::kKept ? dsp : kDecay == Decays::kScalar ? mv * dsp : av[b] * dsp);
      }
    }
    for (int b = 0; b < B; ++b) {
      vec_store(dka + i0 + b * L, vec_at(dka + i0 + b * L) + ak[b]);
      if (kRowGate) vec_store(dga + i0 + b * L, ag[b]);
      if (kSums && !kRowGate) dg_lanes[b % kChains] += ag[b];
    }
  }
  T* dq = g.dq + t * g.dqk_stride;
  T* dk = g.dk + t * g.dqk_stride;
  T ug = T(0);
  for (int64_t j = 0; j < W; ++j) ug += u[j] * gj[j];
  const T sf = scale * f, sug = scale * ug;
  for (int64_t i = 0; i < Kp; ++i) dqa[i] = sf * dqa[i] + r.k[i] * sug;  // this panel's share of dq
  for (int64_t i = 0; i < p.K; ++i) {
    dq[i] += dqa[i];
    dk[i] += dka[i];
  }
  if (g.dg == nullptr) return;
  T* dg = g.dg + t * g.dg_stride;
  T s[4];
  if (kRowGate) {
    for (int64_t i = 0; i < p.K; ++i) dg[i] += dga[i];
  } else if (kSums) {
    sum4(join_chains(dg_lanes), Vec<T>{}, Vec<T>{}, Vec<T>{}, s);
    dg[0] += f * e * s[0];
  } else {
    V qdq[kChains] = {};
    dot_chains(r.q, dqa, Kp, qdq);
    sum4(join_chains(qdq), Vec<T>{}, Vec<T>{}, Vec<T>{}, s);
    *dG = s[0] - vdv;
  }
}

// The chunk's end's S . dS, for the scalar gate's gradient: S = f Y + k u^T of the last step, dS on entry.
template <typename T>
inline T end_state_dot(const DeltaPanel<T>& p, int64_t t, const StepRows<T>& r, int64_t Kp, const T* Y, T f,
                       const T* pr, const T* dS) {
  constexpr int64_t L = kRowLanes<T>;
  using V = RowVec<T>;
  const T beta = p.beta[t * p.beta_stride];
  const T* v = p.v + t * p.v_stride;
  const V fv = splat(f);
  V acc[kChains] = {};
  for (int64_t j = 0; j < p.width; ++j) {
    const V uj = splat(beta * (v[j] - pr[j]));
    for (int64_t i0 = 0; i0 < Kp; i0 += kChains * L)
      for (int h = 0; h < kChains; ++h) {
        const int64_t i = i0 + h * L;
        acc[h] += (fv * vec_at(Y + j * Kp + i) + uj * vec_at(r.k + i)) * vec_at(dS + j * Kp + i);
      }
  }
  T s[4];
  sum4(join_chains(acc), Vec<T>{}, Vec<T>{}, Vec<T>{}, s);
  return s[0];
}

}  // namespace delta

// How many steps ahead the time loops ask for a step's strided lines of v, o and their gradients.
constexpr int64_t kAhead = 8;

template <typename T>
void delta_rule_forward_kernel(const DeltaPanel<T>& p, const DeltaStates<T>& s, T* last, T* o, int64_t o_stride,
                               T* workspace) {
  T* S = workspace;
  // A full panel reads its initial state in the first step and writes its last state in the last step
  // (inference: no checkpoints, whose first one is the initial state).
  const bool full = p.width == delta::W && s.checkpoints == nullptr;
  const bool read_init = full && s.init != nullptr;
  if (!read_init) delta::load_state(s.init, s.row_stride, p, S);
  T f = s.factor != nullptr ? *s.factor : T(1);
  for (int64_t t = 0; t < p.steps; ++t) {
    // A step's v and o are one line each per panel, a head's row of them apart, each touched once: ask
    // for them a few steps ahead (the hardware's prefetchers do not follow such strides).
    if (t + kAhead < p.steps) {
      __builtin_prefetch(p.v + (t + kAhead) * p.v_stride, 0, 3);
      __builtin_prefetch(o + (t + kAhead) * o_stride, 1, 3);
    }
    const int64_t global = p.t0 + t;
    if (s.checkpoints != nullptr && global % kChunk == 0)
      delta::store_state(S, p, s.checkpoints + (global / kChunk) * s.chunk_stride, s.row_stride, f);
    delta::forward_step<true>(p, t, S, f, s.settle && t + 1 == p.steps, o + t * o_stride,
                              read_init && t == 0 ? s.init : nullptr, s.row_stride,
                              full && t + 1 == p.steps ? last : nullptr, s.row_stride);
  }
  if (!full || p.steps == 0) delta::store_state(S, p, last, s.row_stride, s.settle ? f : T(1));
  if (s.factor != nullptr) *s.factor = s.settle ? T(1) : f;
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
    // The chunk's steps again, keeping Y_t (a_t S_{t-1} = factor[t] Y_t) and p_t of each: the forward's
    // arithmetic with its own running factor, which starts at 1 with the chunk.
    using delta::Decays;
    const Decays multiplied = p.per_key ? Decays::kRows : Decays::kScalar;
    T w[2][delta::W], factor[kChunk];
    // The chunk's lines of v (one per panel and step, a head's row apart) a few steps ahead, as the forward.
    for (int64_t t = 0; t < std::min(kAhead, steps); ++t) __builtin_prefetch(p.v + t * p.v_stride, 0, 3);
    delta::StepRows<T> prev = delta::step_rows(p, 0, Kp, rows);
    factor[0] = T(1);
    delta::with_decays(multiplied, [&](auto d) {
      delta::recompute_step<false, decltype(d)::value, T>(p, 0, prev, nullptr, nullptr, Kp, before,
                                                       p.per_key ? T(1) : delta::scalar_decay(p, 0), T(1), decayed,
                                                       projected, w[0]);
    });
    // The next call's state rows, a few per step (it would wait on memory for them otherwise).
    const int64_t rows_per_step = s.next != nullptr && steps > 1 ? (p.K + steps - 2) / (steps - 1) : 0;
    for (int64_t t = 1; t < steps; ++t) {
      if (t + kAhead - 1 < steps) __builtin_prefetch(p.v + (t + kAhead - 1) * p.v_stride, 0, 3);
      for (int64_t i = (t - 1) * rows_per_step; i < std::min(p.K, t * rows_per_step); ++i) {
        __builtin_prefetch(s.next + i * s.row_stride, 0, 2);
        __builtin_prefetch(s.next + i * s.row_stride + delta::W - 1, 0, 2);
      }
      const delta::StepRows<T> r = delta::step_rows(p, t, Kp, rows + (t % 2) * 3 * Kp);
      const T next = p.per_key ? T(1) : factor[t - 1] * delta::scalar_decay(p, t);
      const bool keep = !p.per_key && delta::keeps_factor(next);
      factor[t] = keep ? next : T(1);
      delta::with_decays(keep ? Decays::kKept : multiplied, [&](auto d) {
        delta::recompute_step<true, decltype(d)::value, T>(p, t, r, prev.k, w[(t - 1) % 2], Kp, decayed + (t - 1) * WK,
                                                        next, factor[t], decayed + t * WK, projected + t * delta::W,
                                                        w[t % 2]);
      });
      prev = r;
    }
    // Backward through them, the state gradient as e X with its own running factor e; the chunk's first step
    // multiplies it in, so dS leaves the chunk as the gradient itself.
    // A scalar gate's gradient from the dots where every decay of the chunk is at least 0.8; else from the
    // sums over the state. The dots lose to cancellation as decays get strong (dL/dg_t = a_t S_{t-1} . dS' is
    // then small against q . dq and v . dv): float32's largest error, relative to the largest gradient, is
    // 2-5e-7 from the sums, 5e-7 from the dots at a in [0.93, 0.97], 8e-7 at [0.5, 0.73], 3e-5 at e^-5.
    bool from_dots = g.dg != nullptr && !p.per_key;
    for (int64_t t = 0; from_dots && t < steps; ++t) from_dots = delta::scalar_decay(p, t) >= T(0.8);
    const bool state_sums = g.dg != nullptr && !from_dots;
    T dG[kChunk], end_dot = T(0);
    if (from_dots)
      end_dot = delta::end_state_dot(p, steps - 1, delta::step_rows(p, steps - 1, Kp, rows), Kp,
                                     decayed + (steps - 1) * WK, factor[steps - 1], projected + (steps - 1) * delta::W,
                                     dS);
    // grad_o's and dv's lines, also one per panel and step, ahead of the reverse walk.
    const auto ask_gradients = [&](int64_t t) {
      if (grad_o != nullptr) __builtin_prefetch(grad_o + t * o_stride, 0, 3);
      __builtin_prefetch(g.dv + t * g.dv_stride, 1, 3);
    };
    for (int64_t t = steps - 1; t >= std::max<int64_t>(steps - kAhead, 0); --t) ask_gradients(t);
    T e = T(1);
    for (int64_t t = steps - 1; t >= 0; --t) {
      if (t >= kAhead) ask_gradients(t - kAhead);
      const delta::StepRows<T> r = delta::step_rows(p, t, Kp, rows);
      const T next = p.per_key ? T(1) : e * delta::scalar_decay(p, t);
      const bool keep = !p.per_key && (t > 0 || next == T(1)) && delta::keeps_factor(next);
      const auto step = [&](auto d, auto sums) {
        delta::backward_step<decltype(d)::value, decltype(sums)::value, T>(
            p, t, r, Kp, decayed + t * WK, factor[t], projected + t * delta::W, dS, e, next, grad_o, o_stride,
            o_col_stride, g, acc, dG + t);
      };
      if (p.per_key)
        step(std::integral_constant<Decays, Decays::kRows>{}, std::true_type{});
      else
        delta::with_decays(keep ? Decays::kKept : Decays::kScalar, [&](auto d) {
          if (state_sums)
            step(d, std::true_type{});
          else
            step(d, std::false_type{});
        });
      e = keep ? next : T(1);
    }
    if (from_dots) {  // dL/dg_t: the sum of dL/dG from t to the chunk's end
      T sum = end_dot;
      for (int64_t t = steps - 1; t >= 0; --t) {
        sum += dG[t];
        // From a zero state, a sequence's first step decays nothing: its gradient is 0 (exactly, as the sums
        // give it).
        if (t > 0 || !starts_sequence || s.init != nullptr) g.dg[t * g.dg_stride] += sum;
      }
    }
  }
  if (starts_sequence) delta::store_columns(dS, p, Kp, g.d_init, s.row_stride);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
