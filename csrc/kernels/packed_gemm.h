#pragma once
// C(M, N) = A(M, K) op(B)(K, N) (+ C when accumulate) on raw pointers, with register tiles of
// kRows x 2 vectors of C held across a block of K (the GotoBLAS/BLIS scheme: a panel of B, kKc x
// kPanel, stays in L1 while the rows of A stream past it).
//
// Why not BLAS for these: OpenBLAS spreads every product over its own thread pool, whatever torch's
// thread count. Per time step of a small batch, waking that pool costs more than the product; and when
// torch's OpenMP threads run next to OpenBLAS's spinning ones, both slow down several-fold (measured:
// GRU forward+backward at T=1000, B=1, H=64 went from 2.5 to 12 ms at 2 torch threads). These products
// run on the calling thread, or split over torch's threads with at::parallel_for by fixed tiles.
//
// Every output is computed by the same operations whichever tile or thread computes it (a chain of fused
// multiply-adds over each block of kKc k's in order, the blocks' sums added to C in order): results are
// bitwise identical for any thread count.
//
// Compiled per CPU capability (included by recurrence_{base,avx2,avx512}.cpp): 32-byte AVX vectors in the
// avx2 and avx512 builds (the AVX-512 build uses them too: on this Zen 4 a 512-bit FMA is two 256-bit ones),
// SSE in the base build (GCC vector extensions).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "kernels/packing.h"   // Tile, MatrixB, packed_b_size
#include "kernels/small_gemm.h"  // Vec, vload, small_gemv_nt
#include "kernels/vec_math.h"  // TRE_CPU_CAPABILITY

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// Copies op(B)(k, n) = B[k * rs + n * cs] into panels of kPanel columns: panel p holds columns
// [p * kPanel, (p + 1) * kPanel), its row k at out + p * kPanel * K + k * kPanel, zero-padded past N.
template <typename T>
void pack_b(int64_t K, int64_t N, const T* B, int64_t rs, int64_t cs, T* out) {
  constexpr int64_t W = Tile<T>::kPanel;
  for (int64_t n0 = 0; n0 < N; n0 += W) {
    const int64_t w = N - n0 < W ? N - n0 : W;
    T* p = out + n0 * K;
    for (int64_t k = 0; k < K; ++k) {
      const T* b = B + k * rs + n0 * cs;
      if (cs == 1 && w == W) {
        std::memcpy(p + k * W, b, sizeof(T) * W);
        continue;
      }
      for (int64_t j = 0; j < w; ++j) p[k * W + j] = b[j * cs];
      for (int64_t j = w; j < W; ++j) p[k * W + j] = T(0);
    }
  }
}

#if defined(__GNUC__) || defined(__clang__)
// Writes (or adds) the first `cols` lanes of a pair of vectors to c.
template <typename T>
inline void store_pair(Vec<T> v0, Vec<T> v1, T* c, int64_t cols, bool accumulate) {
  constexpr int64_t L = Tile<T>::kLanes;
  if (cols == 2 * L) {
    if (accumulate) {
      v0 += vload(c);
      v1 += vload(c + L);
    }
    std::memcpy(c, &v0, sizeof(v0));
    std::memcpy(c + L, &v1, sizeof(v1));
    return;
  }
  T tmp[2 * L];
  std::memcpy(tmp, &v0, sizeof(v0));
  std::memcpy(tmp + L, &v1, sizeof(v1));
  for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];
}

// kRows x kPanel outputs: C[r, j] (+)= sum over k < K of A[r * rsa + k * csa] * Bp[k * ldb + j].
template <typename T, int kRows>
inline void tile(int64_t K, const T* A, int64_t rsa, int64_t csa, const T* Bp, int64_t ldb, T* C, int64_t ldc,
                 int64_t cols, bool accumulate) {
  constexpr int64_t L = Tile<T>::kLanes;
  Vec<T> acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) acc0[r] = acc1[r] = Vec<T>{};
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> b0 = vload(Bp + k * ldb), b1 = vload(Bp + k * ldb + L);
    const T* a = A + k * csa;
    for (int r = 0; r < kRows; ++r) {
      const T ar = a[r * rsa];  // scalar * vector broadcasts (Vec{} + ar would add a zero first)
      acc0[r] += ar * b0;
      acc1[r] += ar * b1;
    }
  }
  for (int r = 0; r < kRows; ++r) store_pair(acc0[r], acc1[r], C + r * ldc, cols, accumulate);
}
#endif

// The height of the next register tile of a row range with `left` rows: 6 (4 + 4 for 8, then 4, 2, 1).
// The split depends only on the row count, never on threads.
inline int64_t tile_height(int64_t left) { return left >= 6 && left != 8 ? 6 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }

// Copies rows [m0, m1) x k [0, kc) of A (A(m, k) = A[m * rsa + k * csa]) tile by tile as panel_rows
// splits them: the tile of rows [m, m + h) at out + (m - m0) * kc, its k-th column of h values contiguous.
template <typename T>
void pack_a(int64_t m0, int64_t m1, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* out) {
  for (int64_t m = m0, h; m < m1; m += h) {
    h = tile_height(m1 - m);
    T* o = out + (m - m0) * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = 0; r < h; ++r) o[k * h + r] = A[(m + r) * rsa + k * csa];
  }
}

// Rows [m0, m1) of one panel over one K block, in tiles of tile_height rows. A is read in place, or when
// a_packed from pack_a's layout of these rows (A then points at its start).
template <typename T>
inline void panel_rows(int64_t m0, int64_t m1, int64_t K, const T* A, int64_t rsa, int64_t csa, bool a_packed,
                       const T* Bp, int64_t ldb, T* C, int64_t ldc, int64_t cols, bool accumulate) {
  for (int64_t m = m0, h; m < m1; m += h) {
    h = tile_height(m1 - m);
    const T* a = a_packed ? A + (m - m0) * K : A + m * rsa;
    const int64_t rs = a_packed ? 1 : rsa, cs = a_packed ? h : csa;
    T* c = C + m * ldc;
#if defined(__GNUC__) || defined(__clang__)
    switch (h) {
      case 6: tile<T, 6>(K, a, rs, cs, Bp, ldb, c, ldc, cols, accumulate); break;
      case 4: tile<T, 4>(K, a, rs, cs, Bp, ldb, c, ldc, cols, accumulate); break;
      case 2: tile<T, 2>(K, a, rs, cs, Bp, ldb, c, ldc, cols, accumulate); break;
      default: tile<T, 1>(K, a, rs, cs, Bp, ldb, c, ldc, cols, accumulate); break;
    }
#else
    for (int64_t r = 0; r < h; ++r) {
      for (int64_t j = 0; j < cols; ++j) {
        T sum = T(0);
        for (int64_t k = 0; k < K; ++k) sum += a[r * rs + k * cs] * Bp[k * ldb + j];
        c[r * ldc + j] = accumulate ? c[r * ldc + j] + sum : sum;
      }
    }
#endif
  }
}

// n elements of T from scratch_allocate (packing.h), freed on scope exit; empty when n == 0. (Defined in
// the capability namespace, as every inline function compiled here must be.)
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : p_(static_cast<T*>(scratch_allocate(n * static_cast<int64_t>(sizeof(T))))) {}
  ~Scratch() { scratch_free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_;
};

// Rows [m0, m1) x panels [p0, p1) of C, over all of K in blocks of kKc (in order). B panels that are
// neither packed nor plain row-major full panels are packed block by block into a buffer on the stack.
template <typename T>
void gemm_block(int64_t m0, int64_t m1, int64_t p0, int64_t p1, int64_t N, int64_t K, const T* A, int64_t rsa,
                int64_t csa, const MatrixB<T>& B, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t W = Tile<T>::kPanel, Kc = Tile<T>::kKc;
  alignas(64) T buf[Kc * W];
  // A read down its columns (csa != 1: the transposed operand of a weight gradient) is copied block by
  // block (pack_a) first. Read in place, a tile's k-th values sit csa apart, and at a power-of-two csa
  // (1024 floats) they all fall in one L1 set: a 1024 x 256 x 3200 product ran at 156 GF/s on 2 threads
  // against 194 for OpenBLAS. The tiles then read the same values, so results do not change.
  const Scratch<T> a_packed(csa != 1 ? (m1 - m0) * std::min(Kc, K) : 0);
  for (int64_t k0 = 0; k0 < K; k0 += Kc) {
    const int64_t kc = std::min(Kc, K - k0);
    const bool acc = accumulate || k0 > 0;
    if (a_packed.get()) pack_a<T>(m0, m1, kc, A + k0 * csa, rsa, csa, a_packed.get());
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * W, cols = std::min(W, N - n0);
      const T* bp;
      int64_t ldb;
      if (B.packed) {
        bp = B.data + n0 * K + k0 * W;
        ldb = W;
      } else if (B.cs == 1 && cols == W) {
        bp = B.data + k0 * B.rs + n0;
        ldb = B.rs;
      } else {
        pack_b(kc, cols, B.data + k0 * B.rs + n0 * B.cs, B.rs, B.cs, buf);
        bp = buf;
        ldb = W;
      }
      const T* a = a_packed.get() ? a_packed.get() : A + k0 * csa;
      panel_rows<T>(m0, m1, kc, a, rsa, csa, a_packed.get() != nullptr, bp, ldb, C + n0, ldc, cols, acc);
    }
  }
}

// C(M, N) = A(M, K) op(B)(K, N) (+ C when accumulate); A(m, k) = A[m * rsa + k * csa], C row-major with
// row stride ldc. Splits C into tasks of up to 96 rows x 8 panels over torch's threads (at::parallel_for;
// a product too small to split runs on the calling thread). The rows are cut into equal shares (whole
// 6-row tiles), as many as it takes for the task count to be a multiple of the thread count where the
// shares stay at least 24 rows: a 128-row weight gradient is two tasks of 60 and 68 rows on 2 threads, not
// 96 and 32, which left one thread idle for half of it. Each output's sum runs over k in order whichever
// task computes it, so results do not depend on the split or the thread count.
template <typename T>
void packed_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const MatrixB<T>& B,
                 T* C, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  constexpr int64_t W = Tile<T>::kPanel, kRowsPerTask = 96, kMinRowsPerTask = 24, kPanelsPerTask = 8;
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, T(0));
    return;
  }
  const int64_t panels = (N + W - 1) / W;
  const int64_t col_tasks = (panels + kPanelsPerTask - 1) / kPanelsPerTask;
  int64_t row_tasks = (M + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t threads = at::get_num_threads();
  if (threads > 1) {
    const int64_t step = threads / std::gcd(col_tasks, threads);  // row_tasks * col_tasks % threads == 0
    const int64_t balanced = (row_tasks + step - 1) / step * step;
    if (M >= balanced * kMinRowsPerTask) row_tasks = balanced;
  }
  const int64_t tasks = row_tasks * col_tasks;
  // Row task r covers [row_start(r), row_start(r + 1)): M / row_tasks rounded down to whole 6-row tiles.
  auto row_start = [&](int64_t r) { return r == row_tasks ? M : r * M / row_tasks / 6 * 6; };
  // About 2^18 multiply-adds per task before a thread is worth waking.
  const int64_t task_macs = (M + row_tasks - 1) / row_tasks * std::min(N, kPanelsPerTask * W) * K;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(task_macs, 1));
  auto run = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rt = t / col_tasks, ct = t % col_tasks, p0 = ct * kPanelsPerTask;
      gemm_block(row_start(rt), row_start(rt + 1), p0, std::min(panels, p0 + kPanelsPerTask), N, K, A, rsa, csa,
                 B, C, ldc, accumulate);
    }
  };
  if (tasks <= grain) {
    run(0, tasks);
  } else {
    at::parallel_for(0, tasks, grain, run);
  }
}

// C(M, N) = op(A) op(B) (+ C when accumulate), row-major as kernels::gemm takes them (gemm.h): op(A) is
// A (M, K) with row stride lda, or A stored (K, M) when trans_a; op(B) is B (K, N) with row stride ldb,
// or B stored (N, K) when trans_b, which is first packed into panels (a copy of B, outside any loop)
// unless A has fewer than kPackMinRows rows (packing.h).

template <typename T>
void packed_product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                    const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  const int64_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
  if (trans_b && !trans_a && M < kPackMinRows) {
    // Too few rows to repay packing B (a streaming step's input projection is one row): dot products
    // with B's rows as stored.
    for (int64_t m = 0; m < M; ++m) small_gemv_nt<T>(N, K, A + m * lda, B, ldb, C + m * ldc, accumulate);
    return;
  }
  if (!trans_b) {
    packed_gemm<T>(M, N, K, A, rsa, csa, MatrixB<T>{B, ldb, 1, false}, C, ldc, accumulate);
    return;
  }
  const Scratch<T> packed(packed_b_size<T>(K, N));
  pack_b<T>(K, N, B, 1, ldb, packed.get());
  packed_gemm<T>(M, N, K, A, rsa, csa, MatrixB<T>{packed.get(), 0, 0, true}, C, ldc, accumulate);
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
