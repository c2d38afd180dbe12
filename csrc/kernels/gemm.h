#pragma once
// Row-major matrix products on raw pointers, for use inside time loops (no tensors, no allocation when
// BLAS is linked). Backed by the BLAS that libtorch itself uses (libblas.so.3, OpenBLAS on Debian); when
// the library was built without BLAS it falls back to ATen's mm, which is correct but has per-call overhead.
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

// C(M,N) = alpha * op(A) * op(B) + beta * C, all row-major. op(A) is (M,K): A is stored (M,K) with row
// stride lda, or (K,M) when trans_a. op(B) is (K,N): B is stored (K,N), or (N,K) when trans_b.
// With beta == 0, C need not be initialised.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Whether products larger than this library's kernels take (kOwnProductMaxMacs below, and time steps of
// more than kPackedStepMaxRows rows: recurrence.h) go to BLAS: only when BLAS is linked and torch runs one
// thread. Then OpenBLAS's own threads are the only ones and its 2-thread products beat our 1-thread ones
// (4096 x 512 x 128: 2.7 ms against 4.9 ms). At more torch threads every product runs on our kernels over
// torch's threads: libgomp's workers spin for milliseconds after each OpenMP region (anyone's: autograd's
// gradient sums, a loss), and an OpenBLAS product that starts then shares the cores with them (measured,
// 1024^3 sgemm at 2 torch threads: 18-19 ms right after a 256K-element add_, 10.6-11.5 ms with
// OMP_WAIT_POLICY=PASSIVE). Results are therefore bitwise identical across all thread counts from 2 up,
// and at 1 thread can differ from those in the last bits where a product is larger than our sizes
// (on MKL: where one is 2^21 or larger, as below, or a step of a multi-step layer has more than 16 rows).
bool large_products_on_blas();

// Whether the BLAS is MKL (torch 2.x's wheels link it into libtorch_cpu, whose sgemm_ is then the one
// gemm calls). Then every product above kOwnProductMaxMacsOnMkl goes to it at any thread count: whole at
// 1 thread, and from 2 threads up as fixed blocks of rows or columns (one per 2^20 multiply-adds, at most
// 8, an even count) over torch's threads, one single-threaded MKL call each (MKL runs one thread inside
// a parallel region, and is told so per call), which makes it no matter what OpenMP's workers do. The
// blocks depend on the shape alone, so the products are bitwise identical at every thread count from 2
// up, and also at 1 thread below 2^21 (one block, the same call).
bool products_on_mkl();

// The largest product (multiply-adds) this library's kernels make: kOwnProductMaxMacsOnMkl when
// products_on_mkl(), else kOwnProductMaxMacs.
int64_t own_product_max_macs();

// Whether products above own_product_max_macs() go to BLAS at this thread count (product() below): at
// 1 thread, or on MKL at any count.
bool blas_takes_large_products();

// C(M,N) = op(A) op(B) (+ C when accumulate), in the layout of gemm: the products of a layer that span
// all timesteps. Up to own_product_max_macs() multiply-adds, or at any size on OpenBLAS from 2 threads up,
// they run on this library's packed_gemm (packed_gemm.h) over torch's threads; larger ones on BLAS.
// At one torch thread that is our kernel on one core against OpenBLAS on all: they break even near 2^22
// (16 x 1024 x 256: 77 us against 72 us, recurrence.h); at 2^26 OpenBLAS's two threads win (an RNN layer
// at T=512, B=8, I=H=128, whose input projection is 2^26: forward 3.1 -> 2.5 ms, forward+backward
// 9.9 -> 8.1 ms when its products moved from our kernel to OpenBLAS).
constexpr int64_t kOwnProductMaxMacs = int64_t{1} << 22;
// On MKL (one core against one core) our kernel loses to it from much smaller sizes: an LSTMCell(51, 51)
// at batch 97 in float64, whose input projection is 2^20, 126 -> 107 us forward when it moved to MKL.
constexpr int64_t kOwnProductMaxMacsOnMkl = int64_t{1} << 14;

template <typename T>
void product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
             int64_t ldb, T* C, int64_t ldc, bool accumulate);

// The same product on BLAS at any size: whole at 1 thread or on OpenBLAS, and from 2 threads up on MKL in
// the fixed blocks of products_on_mkl(). What product() does above our sizes, and the steps of more rows
// than packed weights serve (recurrence_impl.h).
template <typename T>
void blas_product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                  const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate);

// True when the products go straight to BLAS (reported by the benchmark).
bool gemm_uses_blas();

}  // namespace kernels
}  // namespace torch_rnn_ext
