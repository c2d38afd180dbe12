// The one-thread products of small time steps against a naive triple loop: every row count up to the
// kernel's limit, column counts with and without a tail, accumulate on and off, float and double.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/small_gemm.h"

namespace {

using namespace torch_rnn_ext::kernels;

template <typename T>
void check(int64_t M, int64_t N, int64_t K, bool accumulate, bool transposed_b = false) {
  std::mt19937 gen(static_cast<unsigned>(M * 1000 + N * 10 + K));
  std::normal_distribution<double> d;
  std::vector<T> A(M * K), B(K * N), C(M * N), ref(M * N);
  for (auto& x : A) x = static_cast<T>(d(gen));
  for (auto& x : B) x = static_cast<T>(d(gen));
  for (size_t i = 0; i < C.size(); ++i) C[i] = ref[i] = static_cast<T>(d(gen));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T s = T(0);
      for (int64_t k = 0; k < K; ++k) s += A[i * K + k] * (transposed_b ? B[j * K + k] : B[k * N + j]);
      ref[i * N + j] = accumulate ? ref[i * N + j] + s : s;
    }
  if (transposed_b) {
    small_gemm_nt<T>(M, N, K, A.data(), K, B.data(), K, C.data(), N, accumulate);
  } else if (M == 1) {
    small_gemv<T>(N, K, A.data(), B.data(), N, C.data(), accumulate);
  } else {
    small_gemm<T>(M, N, K, A.data(), K, B.data(), N, C.data(), N, accumulate);
  }
  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-12;
  for (size_t i = 0; i < C.size(); ++i) ASSERT_NEAR(C[i], ref[i], tol * (1 + std::abs(ref[i]))) << "at " << i;
}

TEST(SmallGemm, MatchesNaiveProduct) {
  for (int64_t M = 1; M <= kSmallGemmMaxRows; ++M)
    for (int64_t N : {1, 7, 16, 37, 64, 200})
      for (int64_t K : {1, 5, 64})
        for (bool acc : {false, true}) {
          check<float>(M, N, K, acc);
          check<double>(M, N, K, acc);
          check<float>(M, N, K, acc, /*transposed_b=*/true);
          check<double>(M, N, K, acc, /*transposed_b=*/true);
        }
}

}  // namespace
