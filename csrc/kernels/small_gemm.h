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

#include "kernels/vec_math.h"  // TRE_CPU_CAPABILITY

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

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
// step needs no transposed copy of W_hh. Each output is a dot product over K, in vector lanes then a
// fixed-order lane sum (deterministic); four outputs at a time share the loads of a.
#if defined(__GNUC__) || defined(__clang__)
// Whole-vector load and lane sum (fixed order). Taking vectors by value keeps accumulator arrays in
// registers: subscripting lanes of an array element makes GCC keep the array on the stack.
template <typename Vec, typename T>
inline Vec load_vec(const T* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
template <typename T, typename Vec>
inline T lane_sum(Vec v) {
  T s = T(0);
  for (int l = 0; l < static_cast<int>(sizeof(Vec) / sizeof(T)); ++l) s += v[l];
  return s;
}
#endif

template <typename T>
void small_gemv_nt(int64_t N, int64_t K, const T* a, const T* W, int64_t ldw, T* c, bool accumulate) {
  int64_t n = 0;
#if defined(__GNUC__) || defined(__clang__)
  typedef T vec __attribute__((vector_size(32)));
  constexpr int kLanes = 32 / sizeof(T), kOut = 4;
  const int64_t Kv = K / kLanes * kLanes;
  for (; n + kOut <= N; n += kOut) {
    vec acc[kOut];
    for (int i = 0; i < kOut; ++i) acc[i] = vec{};
    for (int64_t k = 0; k < Kv; k += kLanes) {
      const vec x = load_vec<vec>(a + k);
      for (int i = 0; i < kOut; ++i) acc[i] += x * load_vec<vec>(W + (n + i) * ldw + k);
    }
    for (int i = 0; i < kOut; ++i) {
      T s = lane_sum<T>(acc[i]);
      for (int64_t k = Kv; k < K; ++k) s += a[k] * W[(n + i) * ldw + k];
      c[n + i] = accumulate ? c[n + i] + s : s;
    }
  }
#endif
  for (; n < N; ++n) {  // the outputs left over
    T s = T(0);
    for (int64_t k = 0; k < K; ++k) s += a[k] * W[n * ldw + k];
    c[n] = accumulate ? c[n] + s : s;
  }
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
