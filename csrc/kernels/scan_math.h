#pragma once
// Scalar math shared by the loops of the linear-time scans (selective_scan.h, wkv4.h). Pure C++ on values,
// branch-free in float32 (vec_math.h) so that the loops calling it vectorise; libm in float64.
//
// Included by capability-specific translation units, so everything here lives in the capability
// namespace TRE_CPU_CAPABILITY (see cpu_capability.h).
#include <cstdint>

#include "kernels/scans.h"
#include "kernels/vec_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// 1 / (1 + e^-x): full relative accuracy also where it is tiny (x << 0), unlike 1/2 + tanh(x/2)/2.
inline float scan_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
inline double scan_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// c ? a : b, as a bit blend in float (a ?: on floats stops GCC's vectoriser).
inline float select_(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return from_bits((as_bits(a) & m) | (as_bits(b) & ~m));
}
inline double select_(bool c, double a, double b) { return c ? a : b; }

// Sums of `lanes` independent accumulators in a fixed order: reductions over the state dimension that
// vectorise without reassociating floating point (the result does not depend on the thread count).
constexpr int kLanes = 8;

// Calls f(n, j) for n in [0, N), with j = the accumulator lane of n.
template <typename F>
inline void for_lanes(int64_t N, F&& f) {
  int64_t n = 0;
#pragma GCC unroll 4  // N = 16 then runs as two vectors with the accumulators in a register
  for (; n + kLanes <= N; n += kLanes)
    for (int j = 0; j < kLanes; ++j) f(n + j, j);
  const int64_t rest = N - n;  // < kLanes
  for (int j = 0; j < kLanes && j < rest; ++j) f(n + j, j);
}

// The lanes summed as a fixed tree ((0+4)+(2+6))+((1+5)+(3+7)), written so that GCC does it with vector
// shuffles in registers (a scalar sum over the array sends the accumulators through memory).
template <typename T>
inline T sum_lanes(const T* acc) {
  static_assert(kLanes == 8, "sum_lanes is written for 8 lanes");
  T b[4], c[2];
  for (int j = 0; j < 4; ++j) b[j] = acc[j] + acc[j + 4];
  for (int j = 0; j < 2; ++j) c[j] = b[j] + b[j + 2];
  return c[0] + c[1];
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
