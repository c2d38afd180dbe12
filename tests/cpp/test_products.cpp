// The matrix products of the time loops and layers against a naive triple loop: the single-row kernels
// (small_gemm.h), packed_gemm in every operand layout (packed_gemm.h: row tails 1..13, column tails, K
// past one block), its results bitwise equal at 1, 2 and 3 threads, and kernels::product on both sides of
// its BLAS threshold, float and double.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "kernels/small_gemm.h"

namespace {

using namespace torch_rnn_ext::kernels;

template <typename T>
std::vector<T> random_vector(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(gen));
  return v;
}

// ref (M, N) = op(A) op(B) (+ C0), op(A)(m, k) = A[m * rsa + k * csa], op(B)(k, n) = B[k * rsb + n * csb].
template <typename T>
std::vector<T> naive(int64_t M, int64_t N, int64_t K, const std::vector<T>& A, int64_t rsa, int64_t csa,
                     const std::vector<T>& B, int64_t rsb, int64_t csb, const std::vector<T>* C0) {
  std::vector<T> ref(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = C0 ? static_cast<double>((*C0)[i * N + j]) : 0.0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<double>(A[i * rsa + k * csa]) * B[k * rsb + j * csb];
      ref[i * N + j] = static_cast<T>(s);
    }
  return ref;
}

template <typename T>
void expect_close(const std::vector<T>& C, const std::vector<T>& ref, int64_t K, const char* what) {
  const double tol = (sizeof(T) == 4 ? 2e-6 : 1e-14) * (K + 4);
  for (size_t i = 0; i < C.size(); ++i)
    ASSERT_NEAR(C[i], ref[i], tol * (1 + std::abs(ref[i]))) << what << " at " << i;
}

template <typename T>
void check_single_row(int64_t N, int64_t K, bool accumulate, bool transposed_b) {
  const auto a = random_vector<T>(K, 1), B = random_vector<T>(K * N, 2);
  std::vector<T> c = random_vector<T>(N, 3);
  const std::vector<T> c0 = c;
  if (transposed_b) {
    small_gemv_nt<T>(N, K, a.data(), B.data(), K, c.data(), accumulate);
  } else {
    small_gemv<T>(N, K, a.data(), B.data(), N, c.data(), accumulate);
  }
  const auto ref = transposed_b ? naive<T>(1, N, K, a, K, 1, B, 1, K, accumulate ? &c0 : nullptr)
                                : naive<T>(1, N, K, a, K, 1, B, N, 1, accumulate ? &c0 : nullptr);
  expect_close(c, ref, K, transposed_b ? "small_gemv_nt" : "small_gemv");
}

TEST(SingleRow, MatchesNaiveProduct) {
  for (int64_t N : {1, 7, 16, 37, 64, 200})
    for (int64_t K : {1, 5, 64})
      for (bool acc : {false, true})
        for (bool tb : {false, true}) {
          check_single_row<float>(N, K, acc, tb);
          check_single_row<double>(N, K, acc, tb);
        }
}

// Layouts of op(B) packed_gemm reads: row-major (K, N), W stored (N, K) read strided, and pre-packed.
enum class BLayout { kRowMajor, kStrided, kPacked };

template <typename T>
void check_packed(int64_t M, int64_t N, int64_t K, bool trans_a, BLayout layout, bool accumulate) {
  const auto A = random_vector<T>(M * K, static_cast<unsigned>(M * 7 + K));
  const auto B = random_vector<T>(K * N, static_cast<unsigned>(N * 11 + K));
  const auto C0 = random_vector<T>(M * N, 5);
  const int64_t rsa = trans_a ? 1 : K, csa = trans_a ? M : 1;
  // kRowMajor: B is (K, N); otherwise B is W stored (N, K) and op(B) = W^T.
  const int64_t rsb = layout == BLayout::kRowMajor ? N : 1, csb = layout == BLayout::kRowMajor ? 1 : K;
  std::vector<T> packed;
  MatrixB<T> mb{B.data(), rsb, csb, false};
  if (layout == BLayout::kPacked) {
    packed.resize(packed_b_size<T>(K, N));
    pack_b<T>(K, N, B.data(), rsb, csb, packed.data());
    mb = MatrixB<T>{packed.data(), 0, 0, true};
  }
  const auto ref = naive<T>(M, N, K, A, rsa, csa, B, rsb, csb, accumulate ? &C0 : nullptr);
  std::vector<T> results[3];
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    std::vector<T> C = C0;
    packed_gemm<T>(M, N, K, A.data(), rsa, csa, mb, C.data(), N, accumulate);
    expect_close(C, ref, K, "packed_gemm");
    results[threads - 1] = C;
  }
  at::set_num_threads(1);
  for (int threads : {2, 3})
    EXPECT_EQ(results[0], results[threads - 1])
        << "packed_gemm differs between 1 and " << threads << " threads at " << M << "x" << N << "x" << K;
}

TEST(PackedGemm, MatchesNaiveProductInEveryLayout) {
  for (int64_t M : {1, 2, 3, 5, 6, 7, 8, 9, 13})
    for (int64_t N : {1, 16, 37})
      for (int64_t K : {1, 5, 300})
        for (bool trans_a : {false, true})
          for (BLayout layout : {BLayout::kRowMajor, BLayout::kStrided, BLayout::kPacked}) {
            check_packed<float>(M, N, K, trans_a, layout, /*accumulate=*/K == 5);
            check_packed<double>(M, N, K, trans_a, layout, /*accumulate=*/K != 5);
          }
}

TEST(PackedGemm, SplitsOverThreadsWithoutChangingBits) {
  // Large enough for several tasks of up to 96 rows x 8 panels, with tails in every dimension; the rows
  // cut into equal shares (a multiple of 2 and of 3 threads where each keeps 24 rows: 128 rows into two
  // tasks of 60 + 68, or three of 42 + 42 + 44; 300 rows of 2 column tasks into 6 at 3 threads; 40 rows stay one).
  check_packed<float>(300, 300, 520, false, BLayout::kPacked, false);
  check_packed<float>(300, 150, 700, true, BLayout::kRowMajor, true);
  check_packed<double>(200, 270, 300, false, BLayout::kStrided, false);
  check_packed<float>(128, 128, 1100, true, BLayout::kRowMajor, false);  // a weight gradient's shape
  check_packed<float>(40, 300, 400, false, BLayout::kPacked, true);
}

TEST(PackedGemm, EmptySumZeroesOrKeepsC) {
  std::vector<float> C(6, 3.0f), A, B;
  packed_gemm<float>(2, 3, 0, A.data(), 0, 1, MatrixB<float>{B.data(), 3, 1, false}, C.data(), 3, true);
  EXPECT_EQ(C, std::vector<float>(6, 3.0f));
  packed_gemm<float>(2, 3, 0, A.data(), 0, 1, MatrixB<float>{B.data(), 3, 1, false}, C.data(), 3, false);
  EXPECT_EQ(C, std::vector<float>(6, 0.0f));
}

// kernels::product with every transpose, below kOwnProductMaxMacs (packed_gemm, the best capability) and
// above it (BLAS).
template <typename T>
void check_product(int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b, bool accumulate) {
  const auto A = random_vector<T>(M * K, 11), B = random_vector<T>(K * N, 12);
  std::vector<T> C = random_vector<T>(M * N, 13);
  const std::vector<T> C0 = C;
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  product<T>(trans_a, trans_b, M, N, K, A.data(), lda, B.data(), ldb, C.data(), N, accumulate);
  const auto ref = naive<T>(M, N, K, A, trans_a ? 1 : K, trans_a ? M : 1, B, trans_b ? 1 : N, trans_b ? K : 1,
                            accumulate ? &C0 : nullptr);
  expect_close(C, ref, K, "product");
}

TEST(Product, MatchesNaiveProductOnBothSidesOfTheBlasThreshold) {
  static_assert(int64_t{700} * 500 * 260 > kOwnProductMaxMacs, "the large case must reach BLAS");
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool acc : {false, true}) {
        check_product<float>(37, 45, 70, ta, tb, acc);
        check_product<double>(37, 45, 70, ta, tb, acc);
        check_product<float>(700, 500, 260, ta, tb, acc);
      }
}

}  // namespace
