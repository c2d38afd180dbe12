#pragma once
// The few-row products of a time step with a small batch: C(M, N) = A(M, K) B(K, N) (+ C when
// accumulate), row-major, on one thread with a fixed summation order (bitwise reproducible).
//
// BLAS computes these as fast on one thread, but OpenBLAS spreads them over its threads, and waking and
// joining them every step costs more than the product (measured: a GRU layer at T=1000, B=1, H=64 takes
// 1.96 ms with OpenBLAS's 2 threads and 1.22 ms with 1; an 8 x 512 x 128 product 9.3 us on 2 threads and
// 9.1 us on 1), and far more when other processes hold the cores. Blocks of outputs are accumulated in
// registers across all of K, so sums are never reassociated. Compiled per CPU capability.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/vec_math.h"  // TRE_CPU_CAPABILITY

namespace torch_rnn_ext {
namespace kernels {

// Products with at most this many rows, whose B fits in this many bytes (L2-resident), use small_gemm.
constexpr int64_t kSmallGemmMaxRows = 8;
constexpr int64_t kSmallGemmMaxBytes = 512 * 1024;

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

#if defined(__GNUC__) || defined(__clang__)
// kRows rows x kVecs vectors of C: kRows * kVecs accumulators in registers (GCC vector extensions, so the
// same code is AVX in the avx2 build and SSE in the base build).
template <typename T, int kRows, int kVecs>
inline void small_gemm_block(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                             bool accumulate) {
  typedef T vec __attribute__((vector_size(32)));
  constexpr int kLanes = 32 / sizeof(T);
  vec acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec b[kVecs];
    for (int v = 0; v < kVecs; ++v) std::memcpy(&b[v], B + k * ldb + v * kLanes, sizeof(vec));
    for (int r = 0; r < kRows; ++r) {
      const vec a = vec{} + A[r * lda + k];
      for (int v = 0; v < kVecs; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      T* c = C + r * ldc + v * kLanes;
      vec out = acc[r][v];
      if (accumulate) {
        vec old;
        std::memcpy(&old, c, sizeof(vec));
        out += old;
      }
      std::memcpy(c, &out, sizeof(vec));
    }
  }
}
#endif

template <typename T, int kRows>
inline void small_gemm_rows(int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                            int64_t ldc, bool accumulate) {
  int64_t n0 = 0;
#if defined(__GNUC__) || defined(__clang__)
  constexpr int kVecs = kRows >= 4 ? 2 : 4, kLanes = 32 / sizeof(T);
  for (; n0 + kVecs * kLanes <= N; n0 += kVecs * kLanes)
    small_gemm_block<T, kRows, kVecs>(K, A, lda, B + n0, ldb, C + n0, ldc, accumulate);
#endif
  for (; n0 < N; ++n0) {  // the columns left over
    for (int r = 0; r < kRows; ++r) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k) s += A[r * lda + k] * B[k * ldb + n0];
      C[r * ldc + n0] = accumulate ? C[r * ldc + n0] + s : s;
    }
  }
}

// 2..kSmallGemmMaxRows rows (also correct for any M).
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                int64_t ldc, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) small_gemm_rows<T, 4>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
  for (; m + 2 <= M; m += 2) small_gemm_rows<T, 2>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
  for (; m < M; ++m) small_gemm_rows<T, 1>(N, K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, accumulate);
}

// C(M, N) = A(M, K) W(N, K)^T (+ C when accumulate): W as torch stores weights (rows contiguous), so a
// forward step needs no transposed copy of W_hh. Each output is a dot product over K, in vector lanes
// then a fixed-order lane sum (deterministic); four outputs at a time share the loads of A.
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

template <typename T, int kRows>
inline void small_gemm_nt_rows(int64_t N, int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
                               int64_t ldc, bool accumulate) {
  int64_t n = 0;
#if defined(__GNUC__) || defined(__clang__)
  typedef T vec __attribute__((vector_size(32)));
  constexpr int kLanes = 32 / sizeof(T), kOut = 4;
  const int64_t Kv = K / kLanes * kLanes;
  for (; n + kOut <= N; n += kOut) {
    vec acc[kRows][kOut];
    for (int r = 0; r < kRows; ++r)
      for (int i = 0; i < kOut; ++i) acc[r][i] = vec{};
    for (int64_t k = 0; k < Kv; k += kLanes) {
      vec w[kOut];
      for (int i = 0; i < kOut; ++i) w[i] = load_vec<vec>(W + (n + i) * ldw + k);
      for (int r = 0; r < kRows; ++r) {
        const vec a = load_vec<vec>(A + r * lda + k);
        for (int i = 0; i < kOut; ++i) acc[r][i] += a * w[i];
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int i = 0; i < kOut; ++i) {
        T s = lane_sum<T>(acc[r][i]);
        for (int64_t k = Kv; k < K; ++k) s += A[r * lda + k] * W[(n + i) * ldw + k];
        T* c = C + r * ldc + n + i;
        *c = accumulate ? *c + s : s;
      }
    }
  }
#endif
  for (; n < N; ++n) {  // the outputs left over
    for (int r = 0; r < kRows; ++r) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k) s += A[r * lda + k] * W[n * ldw + k];
      T* c = C + r * ldc + n;
      *c = accumulate ? *c + s : s;
    }
  }
}

template <typename T>
void small_gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, T* C,
                   int64_t ldc, bool accumulate) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2)
    small_gemm_nt_rows<T, 2>(N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, accumulate);
  for (; m < M; ++m) small_gemm_nt_rows<T, 1>(N, K, A + m * lda, lda, W, ldw, C + m * ldc, ldc, accumulate);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
