#pragma once
// The layout packed_gemm (packed_gemm.h) reads B in: the same for every CPU capability (all variants use
// 32-byte vectors). Only constants and plain structs here: functions compiled into an -mavx2 translation
// unit must live in its capability namespace, or the linker may hand AVX code to a CPU without it.
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

// op(B), (K, N): element (k, n) is data[k * rs + n * cs]; or, when packed, pack_b's layout (rs, cs unused).
template <typename T>
struct MatrixB {
  const T* data;
  int64_t rs, cs;
  bool packed;
};

}  // namespace kernels
}  // namespace torch_rnn_ext
