#pragma once
// The ATen side shared by the linear-time scans on CPU (selective_scan, wkv4): how work is spread over
// threads and how per-task partial gradients are summed. Each output element is written by exactly one
// task, and every sum runs in a fixed order, so results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <vector>

namespace torch_rnn_ext {
namespace cpu {

// Calls f(i) for i in [0, n) across threads; the product of `work` is a rough cost of one item, to size
// the grain (saturating: the sizes of a long sequence can multiply past int64).
template <typename F>
void parallel_items(int64_t n, std::initializer_list<int64_t> work, const F& f) {
  int64_t cost = 1;
  for (int64_t w : work)
    if (__builtin_mul_overflow(cost, std::max<int64_t>(1, w), &cost)) cost = std::numeric_limits<int64_t>::max();
  const int64_t grain = std::max<int64_t>(1, 32768 / cost);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i);
  });
}

// Calls f(i, part) for i in [0, n) across threads, in `parts` contiguous ranges of items (part < parts
// names the range): a caller gives each range its own scratch space, whichever thread runs it.
template <typename F>
void parallel_parts(int64_t n, int64_t parts, const F& f) {
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part)
      for (int64_t i = n * part / parts; i < n * (part + 1) / parts; ++i) f(i, part);
  });
}

// Sums ranges of rows: in is (outer, K, inner) and bounds (R + 1 values) cut [0, K) into R ranges;
// returns (outer, R, inner) with out[o, r] = sum of in[o, k] for k in [bounds[r], bounds[r + 1]),
// added in increasing k.
inline at::Tensor sum_row_ranges(const at::Tensor& in, const std::vector<int64_t>& bounds) {
  const int64_t outer = in.size(0), K = in.size(1), inner = in.size(2);
  const int64_t R = static_cast<int64_t>(bounds.size()) - 1;
  at::Tensor out = at::zeros({outer, R, inner}, in.options());
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "sum_row_ranges", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    parallel_items(outer * R, {inner, K / std::max<int64_t>(1, R)}, [&](int64_t row) {
      const int64_t o = row / R, r = row % R;
      scalar_t* d = dst + row * inner;
      for (int64_t k = bounds[r]; k < bounds[r + 1]; ++k) {
        const scalar_t* s = src + (o * K + k) * inner;
        for (int64_t i = 0; i < inner; ++i) d[i] += s[i];
      }
    });
  });
  return out;
}

// Sum over the first dimension, in order: (K, ...) -> (...).
inline at::Tensor sum_leading(const at::Tensor& in) {
  std::vector<int64_t> sizes(in.sizes().begin() + 1, in.sizes().end());
  // sizes spelled out, not -1: in may be empty (a batch of 0)
  const int64_t inner = c10::multiply_integers(sizes);
  return sum_row_ranges(in.contiguous().view({1, in.size(0), inner}), {0, in.size(0)}).view(sizes);
}

}  // namespace cpu
}  // namespace torch_rnn_ext
