#pragma once
// c(N) = a(K) B(K, N) (+ c when accumulate), B row-major: the single-row product of a batch-1 time step.
// One thread and a fixed summation order (bitwise reproducible). BLAS computes this as fast on one thread,
// but when OpenBLAS spreads such a small GEMV over its threads, waking and joining them costs more than
// the product (measured: a GRU layer at T=1000, B=1, H=64 takes 1.96 ms with OpenBLAS's 2 threads and
// 1.22 ms with 1). Blocks of kCols outputs are accumulated in registers across all of K, so the column
// loop vectorises without reassociating sums. Compiled per CPU capability.
#include <algorithm>
#include <cstdint>

#include "kernels/vec_math.h"  // TRE_CPU_CAPABILITY

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

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

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
