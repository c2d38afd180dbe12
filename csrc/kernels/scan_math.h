#pragma once
// Scalar math shared by the linear-time scans (selective_scan, wkv4). Pure C++ on values. The exp inside
// the inner loops is exp_ of vec_math.h (branch-free in float32, so those loops vectorise).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/vec_math.h"

namespace torch_rnn_ext {
namespace kernels {

// Steps between saved states: backward keeps the state at every kChunk-th step and recomputes the
// steps in between, so its memory does not grow as L x state size.
constexpr int64_t kChunk = 64;

inline int64_t num_chunks(int64_t L) { return (L + kChunk - 1) / kChunk; }

template <typename T>
inline T sigmoid_of(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// torch.nn.functional.softplus with beta 1 and threshold 20.
template <typename T>
inline T softplus_of(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

// Sums of `lanes` independent accumulators in a fixed order: reductions over the state dimension that
// vectorise without reassociating floating point (the result does not depend on the thread count).
constexpr int kLanes = 8;

// Calls f(n, j) for n in [0, N), with j = the accumulator lane of n.
template <typename F>
inline void for_lanes(int64_t N, F&& f) {
  int64_t n = 0;
  for (; n + kLanes <= N; n += kLanes)
    for (int j = 0; j < kLanes; ++j) f(n + j, j);
  for (int j = 0; n < N; ++n, ++j) f(n, j);
}

template <typename T>
inline T sum_lanes(const T* acc) {
  T s = T(0);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

}  // namespace kernels
}  // namespace torch_rnn_ext
