#pragma once
// The single-row products of a time step with batch 1, on one thread with a fixed summation order
// (bitwise reproducible): c(N) = a(K) B(K, N), and c(N) = W(N, K) a(K) with W as torch stores weights.
//
// BLAS spreads even these over its threads, and waking and joining them every step costs more than the
// product (measured: a GRU layer at T=1000, B=1, H=64 took 1.96 ms with OpenBLAS's 2 threads and 1.22 ms
// with 1). Steps with 2..16 rows use packed_gemm.h. Compiled per CPU capability.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/packing.h"   // Tile
#include "kernels/vec_math.h"  // TRE_CPU_CAPABILITY

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

#if defined(__GNUC__) || defined(__clang__)
// One 32-byte vector of T (GCC vector extensions: AVX in the avx2 build, SSE pairs in the base build),
// shared with packed_gemm.h. (An alias template would drop the vector_size attribute; a member typedef
// keeps it.)
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

// Whole-vector load from any alignment.
template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
#endif

// Single row (batch 1): c(N) = a(K) B(K, N).

template <typename T, int64_t kCols>
inline void small_gemv_block(int64_t K, const T* __restrict a, const T* __restrict B, int64_t ldb,
                             T* __restrict c, int64_t cols, bool accumulate) {
  T acc[kCols] = {};
  if (cols == kCols) {
    for (int64_t k = 0; k < K; ++k) {
      const T* __restrict b = B + k * ldb;
      const T ak = a[k];
#pragma GCC ivdep
      for (int64_t j = 0; j < kCols; ++j) acc[j] += ak * b[j];
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const T* __restrict b = B + k * ldb;
      const T ak = a[k];
      for (int64_t j = 0; j < cols; ++j) acc[j] += ak * b[j];
    }
  }
  for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + acc[j] : acc[j];
}

template <typename T>
void small_gemv(int64_t N, int64_t K, const T* a, const T* B, int64_t ldb, T* c, bool accumulate) {
  constexpr int64_t kCols = 256 / static_cast<int64_t>(sizeof(T));  // 8 AVX accumulators
  for (int64_t n0 = 0; n0 < N; n0 += kCols) {
    small_gemv_block<T, kCols>(K, a, B + n0, ldb, c + n0, std::min(kCols, N - n0), accumulate);
  }
}

// c(N) = W(N, K) a(K) (+ c when accumulate): W as torch stores weights (rows contiguous), so a forward
// step needs no transposed copy of W_hh. Each output is a dot product over K in vector lanes; the lanes
// of four outputs are then summed together by a fixed tree of pairwise adds (deterministic), which keeps
// the reduction off one long chain of dependent adds per output.
#if defined(__GNUC__) || defined(__clang__)
// {sum of a's lanes, of b's, of c's, of d's} for 8-lane vectors (float): hadd-like shuffles, then the
// two 128-bit halves added. Taking vectors by value keeps them in registers.
template <typename T>
inline void sum4(Vec<T> a, Vec<T> b, Vec<T> c, Vec<T> d, T* out) {
  if constexpr (Tile<T>::kLanes == 8) {
    typedef int32_t Mask __attribute__((vector_size(32)));
    const Mask even = {0, 2, 8, 10, 4, 6, 12, 14}, odd = {1, 3, 9, 11, 5, 7, 13, 15};
    const Vec<T> ab = __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd);
    const Vec<T> cd = __builtin_shuffle(c, d, even) + __builtin_shuffle(c, d, odd);
    const Vec<T> abcd = __builtin_shuffle(ab, cd, even) + __builtin_shuffle(ab, cd, odd);
    // out[i] = abcd[i] + abcd[i + 4] as one vector add and a 16-byte store (lane by lane, GCC extracts
    // every lane with shuffles of its own and adds them one at a time).
    const Mask high = {4, 5, 6, 7, 4, 5, 6, 7};
    const Vec<T> sums = abcd + __builtin_shuffle(abcd, high);
    std::memcpy(out, &sums, 4 * sizeof(T));
  } else {  // 4 lanes (double)
    typedef int64_t Mask __attribute__((vector_size(32)));
    const Mask lo = {0, 4, 2, 6}, hi = {1, 5, 3, 7};
    const Vec<T> ab = __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);  // a01 b01 a23 b23
    const Vec<T> cd = __builtin_shuffle(c, d, lo) + __builtin_shuffle(c, d, hi);
    out[0] = ab[0] + ab[2];
    out[1] = ab[1] + ab[3];
    out[2] = cd[0] + cd[2];
    out[3] = cd[1] + cd[3];
  }
}
#endif

template <typename T>
void small_gemv_nt(int64_t N, int64_t K, const T* a, const T* W, int64_t ldw, T* c, bool accumulate) {
#if defined(__GNUC__) || defined(__clang__)
  // Every output, the last K % kLanes products included, is summed in vector lanes: no scalar chain of
  // multiply-adds that the compiler could vectorise one way for AVX2 and another for AVX-512 (GCC makes
  // such a chain an in-order vector reduction with separate multiplies and adds under AVX-512), so every
  // capability with FMA gives the same bits.
  constexpr int64_t kLanes = Tile<T>::kLanes;
  const int64_t Kv = K / kLanes * kLanes, tail = K - Kv;
  Vec<T> a_tail = Vec<T>{};
  std::memcpy(&a_tail, a + Kv, tail * sizeof(T));
  for (int64_t n = 0; n < N; n += 4) {
    const int64_t rows = std::min<int64_t>(4, N - n);  // rows past N repeat the last one, unused
    const T *w0 = W + n * ldw, *w1 = W + (n + std::min<int64_t>(1, rows - 1)) * ldw,
            *w2 = W + (n + std::min<int64_t>(2, rows - 1)) * ldw, *w3 = W + (n + rows - 1) * ldw;
    Vec<T> acc0 = Vec<T>{}, acc1 = Vec<T>{}, acc2 = Vec<T>{}, acc3 = Vec<T>{};
    for (int64_t k = 0; k < Kv; k += kLanes) {
      const Vec<T> x = vload(a + k);
      acc0 += x * vload(w0 + k);
      acc1 += x * vload(w1 + k);
      acc2 += x * vload(w2 + k);
      acc3 += x * vload(w3 + k);
    }
    if (tail) {
      Vec<T> t0 = Vec<T>{}, t1 = Vec<T>{}, t2 = Vec<T>{}, t3 = Vec<T>{};
      std::memcpy(&t0, w0 + Kv, tail * sizeof(T));
      std::memcpy(&t1, w1 + Kv, tail * sizeof(T));
      std::memcpy(&t2, w2 + Kv, tail * sizeof(T));
      std::memcpy(&t3, w3 + Kv, tail * sizeof(T));
      acc0 += a_tail * t0;
      acc1 += a_tail * t1;
      acc2 += a_tail * t2;
      acc3 += a_tail * t3;
    }
    T s[4];
    sum4<T>(acc0, acc1, acc2, acc3, s);
    for (int64_t i = 0; i < rows; ++i) c[n + i] = accumulate ? c[n + i] + s[i] : s[i];
  }
#else
  for (int64_t n = 0; n < N; ++n) {
    T s = T(0);
    for (int64_t k = 0; k < K; ++k) s += a[k] * W[n * ldw + k];
    c[n] = accumulate ? c[n] + s : s;
  }
#endif
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
