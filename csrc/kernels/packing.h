#pragma once
// The layout packed_gemm (packed_gemm.h) reads B in: the same for every CPU capability (all variants use
// 32-byte vectors). No inline functions here: one compiled into an -mavx2 translation unit must live in
// its capability namespace, or the linker may hand AVX code to a CPU without it; the functions are
// declared here and defined out of line (gemm.cpp).
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

// A register tile of packed_gemm is rows x kPanel columns (two 32-byte vectors); K runs in blocks of kKc.
template <typename T>
struct Tile {
  static constexpr int64_t kLanes = 32 / static_cast<int64_t>(sizeof(T));
  static constexpr int64_t kPanel = 2 * kLanes;
  static constexpr int64_t kKc = 256;
};

// A product with a transposed B (B stored (N, K), as torch stores weights) packs B into panels first, unless
// A has fewer rows than this: then each row is a set of dot products with B's rows as stored.
constexpr int64_t kPackMinRows = 8;

// Elements of pack_b's output (packed_gemm.h) for a (K, N) op(B): N rounded up to whole panels, times K.
// Defined once, in gemm.cpp (a translation unit without -mavx2), for float and double.
template <typename T>
int64_t packed_b_size(int64_t K, int64_t N);

// Scratch memory of the kernels (packed copies of operands) from torch's CPU allocator, so that its
// accounting (the profiler's memory events, the benchmark's peak memory) sees it like any tensor.
// Defined once, in gemm.cpp; scratch_free(nullptr) does nothing.
void* scratch_allocate(int64_t bytes);
void scratch_free(void* p);

// op(B), (K, N): element (k, n) is data[k * rs + n * cs]; or, when packed, pack_b's layout (rs, cs unused).
template <typename T>
struct MatrixB {
  const T* data;
  int64_t rs, cs;
  bool packed;
};

}  // namespace kernels
}  // namespace torch_rnn_ext
