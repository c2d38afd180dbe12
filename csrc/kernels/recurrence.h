#pragma once
// The API of the recurrent time loop, independent of CPU capability: the ATen binding layer calls these;
// they run the variant compiled for the best instruction set this CPU has (recurrence.cpp).
#include <cstdint>

#include "kernels/cell_traits.h"

namespace torch_rnn_ext {
namespace kernels {

// A sequence of N rows in time-major order: the rows of time t are
// [offsets[t], offsets[t] + batch_sizes[t]), batch_sizes non-increasing (see recurrence_impl.h).
struct SeqLayout {
  const int64_t* batch_sizes;  // [T]
  const int64_t* offsets;      // [T]
  int64_t T;
  bool reverse;
  int64_t time(int64_t step) const { return reverse ? T - 1 - step : step; }
};

// Arguments as documented at recurrence_forward / recurrence_backward in recurrence_impl.h.
template <CellKind K, typename T>
void forward(const SeqLayout& L, int64_t H, const T* gi, const T* w_hh, const T* b_hh, T* h, T* c, T* out,
             T* saved, T* gh);

template <CellKind K, typename T>
void backward(const SeqLayout& L, int64_t H, const T* w_hh, const T* saved, const T* out, const T* h0,
              const T* c0, const T* zeros, const T* grad_out, T* dh, T* dc, T* dgi, T* dgh, T* h_prev);

// out[c] = sum over rows of X[r, c], rows in order (deterministic).
template <typename T>
void column_sum(const T* X, int64_t rows, int64_t cols, T* out);

// The instruction set the time loops run with ("avx2" or "base").
const char* cpu_capability();

}  // namespace kernels
}  // namespace torch_rnn_ext
