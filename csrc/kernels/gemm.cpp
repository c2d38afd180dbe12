#include "kernels/gemm.h"

#include "kernels/cpu_capability.h"
#include "kernels/packing.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <limits>

#ifdef TRE_HAVE_BLAS
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
void sgemv_(const char* t, const int* m, const int* n, const float* alpha, const float* a, const int* lda,
            const float* x, const int* incx, const float* beta, float* y, const int* incy);
void dgemv_(const char* t, const int* m, const int* n, const double* alpha, const double* a, const int* lda,
            const double* x, const int* incx, const double* beta, double* y, const int* incy);
// MKL's (torch 2.x wheels link MKL into libtorch_cpu, whose sgemm_ is then the one above): the threads
// the calling thread's MKL calls use, 0 for the global setting; returns the previous value. Absent
// (null) with any other BLAS. The C entry point (mkl_service.h maps mkl_set_num_threads_local to it; the
// lower-case symbol is the Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}
#endif

namespace torch_rnn_ext {
namespace kernels {

// The per-capability instantiations of packed_gemm.h's packed_product (recurrence_instances.h).
#define TRE_DECLARE_PRODUCT(NS)                                                                            \
  namespace NS {                                                                                           \
  template <typename T>                                                                                    \
  void packed_product(bool, bool, int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*,   \
                      int64_t, bool);                                                                      \
  }
TRE_FOR_EACH_CAPABILITY(TRE_DECLARE_PRODUCT)
#undef TRE_DECLARE_PRODUCT

namespace {

#ifdef TRE_HAVE_BLAS
inline int to_blas_int(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "torch_rnn_ext: matrix dimension ", v,
              " exceeds the BLAS integer range");
  return static_cast<int>(v);
}

inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                      const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                      const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemv(const char* t, const int* m, const int* n, const float* alpha, const float* a,
                      const int* lda, const float* x, const int* incx, const float* beta, float* y,
                      const int* incy) {
  sgemv_(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
inline void blas_gemv(const char* t, const int* m, const int* n, const double* alpha, const double* a,
                      const int* lda, const double* x, const int* incx, const double* beta, double* y,
                      const int* incy) {
  dgemv_(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
#endif

}  // namespace

void* scratch_allocate(int64_t bytes) {
  return bytes > 0 ? c10::GetCPUAllocator()->raw_allocate(static_cast<size_t>(bytes)) : nullptr;
}

void scratch_free(void* p) {
  if (p) c10::GetCPUAllocator()->raw_deallocate(p);
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS leaves C alone only when beta == 1; make the empty product explicit.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
#ifdef TRE_HAVE_BLAS
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T on the same memory.
  const int m = to_blas_int(N), n = to_blas_int(M), k = to_blas_int(K);
  const int ilda = to_blas_int(lda), ildb = to_blas_int(ldb), ildc = to_blas_int(ldc);
  if (M == 1) {
    // One row: y(N) = alpha * op(B)^T a + beta * y, a matrix-vector product.
    const int inca = trans_a ? ilda : 1, one = 1;
    if (trans_b) {  // B stored (N,K): column-major (K,N); y = B a -> 'T' on the column-major view
      blas_gemv("T", &k, &m, &alpha, B, &ildb, A, &inca, &beta, C, &one);
    } else {        // B stored (K,N): column-major (N,K); y = B^T a -> 'N'
      blas_gemv("N", &m, &k, &alpha, B, &ildb, A, &inca, &beta, C, &one);
    }
    return;
  }
  blas_gemm(trans_b ? "T" : "N", trans_a ? "T" : "N", &m, &n, &k, &alpha, B, &ildb, A, &ilda, &beta, C,
            &ildc);
#else
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto wrap = [&](const T* p, int64_t r, int64_t c, int64_t ld, bool t) {
    at::Tensor x = at::from_blob(const_cast<T*>(p), {t ? c : r, t ? r : c}, {ld, 1}, opts);
    return t ? x.t() : x;
  };
  at::Tensor a = wrap(A, M, K, lda, trans_a), b = wrap(B, K, N, ldb, trans_b);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    c.copy_(at::mm(a, b).mul_(alpha));
  } else {
    c.mul_(beta).add_(at::mm(a, b), alpha);
  }
#endif
}

template <typename T>
int64_t packed_b_size(int64_t K, int64_t N) {
  constexpr int64_t W = Tile<T>::kPanel;
  return (N + W - 1) / W * W * K;
}

namespace {

// The blocks of blas_in_blocks: at most kMaxBlocks, each of at least kBlockMacs multiply-adds (about 6 us
// of one core's MKL sgemm here, several times a call's overhead), an even count when more than one (so two
// threads share them evenly), rows or columns a multiple of 16.
constexpr int64_t kMaxBlocks = 8;
constexpr int64_t kBlockMacs = int64_t{1} << 20;

// C = op(A) op(B) on BLAS as fixed blocks of C's rows (or of its columns, when op(B) is the larger
// operand: each block reads all of the other one) over torch's threads, one single-threaded BLAS call
// per block. The blocks depend on the shape alone, so every element is the sum of the same terms in
// the same order at any thread count.
template <typename T>
void blas_in_blocks(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                    const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  const bool by_rows = M >= N;
  const int64_t extent = by_rows ? M : N;
  int64_t blocks = std::min<int64_t>(kMaxBlocks, M * N * K / kBlockMacs);
  if (blocks > 1) blocks &= ~int64_t{1};
  blocks = std::max<int64_t>(blocks, 1);
  const int64_t size = ((extent + blocks - 1) / blocks + 15) / 16 * 16;
  const int64_t count = (extent + size - 1) / size;
#ifdef TRE_HAVE_BLAS
  for (int64_t v : {M, N, K, lda, ldb, ldc}) to_blas_int(v);  // throws here, not inside the parallel region
#endif
  at::parallel_for(0, count, 1, [&](int64_t b0, int64_t b1) {
#ifdef TRE_HAVE_BLAS
    // MKL already runs one thread inside a parallel region by default; MKL_DYNAMIC=false could change
    // that, so say it.
    const int previous = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
#endif
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * size, n = std::min(size, extent - lo);
      if (by_rows) {
        gemm<T>(trans_a, trans_b, n, N, K, T(1), trans_a ? A + lo : A + lo * lda, lda, B, ldb,
                accumulate ? T(1) : T(0), C + lo * ldc, ldc);
      } else {
        gemm<T>(trans_a, trans_b, M, n, K, T(1), A, lda, trans_b ? B + lo * ldb : B + lo, ldb,
                accumulate ? T(1) : T(0), C + lo, ldc);
      }
    }
#ifdef TRE_HAVE_BLAS
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
#endif
  });
}

}  // namespace

template <typename T>
void blas_product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                  const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (products_on_mkl() && at::get_num_threads() > 1) {
    blas_in_blocks<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  } else {
    gemm<T>(trans_a, trans_b, M, N, K, T(1), A, lda, B, ldb, accumulate ? T(1) : T(0), C, ldc);
  }
}

template <typename T>
void product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
             int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (M * N * K > own_product_max_macs() && blas_takes_large_products()) {
    blas_product<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  } else {
    TRE_CALL_BEST(packed_product<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate));
  }
}

bool large_products_on_blas() { return gemm_uses_blas() && at::get_num_threads() == 1; }

bool products_on_mkl() {
#ifdef TRE_HAVE_BLAS
  return MKL_Set_Num_Threads_Local != nullptr;
#else
  return false;
#endif
}

int64_t own_product_max_macs() { return products_on_mkl() ? kOwnProductMaxMacsOnMkl : kOwnProductMaxMacs; }

bool blas_takes_large_products() { return large_products_on_blas() || products_on_mkl(); }

bool gemm_uses_blas() {
#ifdef TRE_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);
template int64_t packed_b_size<float>(int64_t, int64_t);
template int64_t packed_b_size<double>(int64_t, int64_t);
template void product<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                             int64_t, float*, int64_t, bool);
template void blas_product<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                  int64_t, float*, int64_t, bool);
template void blas_product<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                   const double*, int64_t, double*, int64_t, bool);
template void product<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                              int64_t, double*, int64_t, bool);

}  // namespace kernels
}  // namespace torch_rnn_ext
