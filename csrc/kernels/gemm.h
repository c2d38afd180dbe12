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
// and at 1 thread can differ from those in the last bits where a product is larger than our sizes.
bool large_products_on_blas();

// Whether, from 2 torch threads up, those products go to BLAS after all, as fixed blocks of rows or
// columns over torch's threads with one single-threaded BLAS call each: when the BLAS is MKL (torch 2.x's
// wheels), which runs one thread inside a parallel region and is told so per call. The blocks depend on
// the shape alone, so results stay bitwise identical across thread counts from 2 up. MKL at 2 threads
// makes these products about twice as fast as packed_gemm on the Intel Xeon of docs/performance.md.
bool large_products_in_blas_blocks();

// C(M,N) = op(A) op(B) (+ C when accumulate), in the layout of gemm: the products of a layer that span
// all timesteps. Up to kOwnProductMaxMacs multiply-adds, or at any size when neither of the above holds,
// they run on this library's packed_gemm (packed_gemm.h) over torch's threads; larger ones on BLAS.
// At one torch thread that is our kernel on one core against OpenBLAS on all: they break even near 2^22
// (16 x 1024 x 256: 77 us against 72 us, recurrence.h); at 2^26 OpenBLAS's two threads win (an RNN layer
// at T=512, B=8, I=H=128, whose input projection is 2^26: forward 3.1 -> 2.5 ms, forward+backward
// 9.9 -> 8.1 ms when its products moved from our kernel to OpenBLAS).
constexpr int64_t kOwnProductMaxMacs = int64_t{1} << 22;

template <typename T>
void product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
             int64_t ldb, T* C, int64_t ldc, bool accumulate);

// True when the products go straight to BLAS (reported by the benchmark).
bool gemm_uses_blas();

}  // namespace kernels
}  // namespace torch_rnn_ext
