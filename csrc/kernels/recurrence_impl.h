#pragma once
// The time loop shared by every recurrent cell, on raw pointers (no at::Tensor, no allocation inside).
//
// A sequence is N rows in time-major order: the rows of time t are [offsets[t], offsets[t] + batch_sizes[t]),
// and batch_sizes is non-increasing. A padded (T, B, .) sequence is the case batch_sizes[t] == B; a
// PackedSequence is the general case. At every step only the first batch_sizes[t] batch rows advance;
// the others keep their state, so a row's final state is the one after its own last step, as in torch.nn.
// A reverse layer walks time from T-1 to 0; a row that becomes active then starts from its initial state.
//
// A cell policy (cells.h) supplies the pointwise math for one batch row, and its constants (cell_traits.h):
//   forward(H, gi, gh, b_hh, h, c, out, saved)
//   backward(H, saved, h_new, h_prev, prev_saved, c_init, dh, dc, dgi, dgh)
// This header is compiled once per CPU capability (recurrence_base.cpp, recurrence_avx2.cpp), so its
// templates live in the namespace TRE_CPU_CAPABILITY and never merge across capabilities.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cell_traits.h"
#include "kernels/cells.h"
#include "kernels/gemm.h"
#include "kernels/recurrence.h"
#include "kernels/vec_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// Forward over all steps.
//   gi     (N, G*H)  input projections x W_ih^T + b_ih, one row per sequence row
//   w_hh   (G*H, H)  row-major; b_hh (G*H) (zeros when the layer has no bias)
//   h, c   (B, H)    initial states on entry, final states on exit (c only when Cell::kHasCell)
//   out    (N, H)    the h of every row
//   saved  (N, kSaved*H) or nullptr (inference: nothing saved)
//   gh     (B, G*H)  workspace
template <typename Cell, typename T>
void recurrence_forward(const SeqLayout& L, int64_t H, const T* gi, const T* w_hh, const T* b_hh, T* h,
                        T* c, T* out, T* saved, T* gh) {
  const int64_t GH = Cell::kGates * H, SH = Cell::kSaved * H;
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.time(s), bs = L.batch_sizes[t], off = L.offsets[t];
    gemm<T>(false, true, bs, GH, H, T(1), h, H, w_hh, H, T(0), gh, GH);
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t row = off + b;
      T* cb = Cell::kHasCell ? c + b * H : nullptr;
      if (saved) {
        Cell::template forward<true>(H, gi + row * GH, gh + b * GH, b_hh, h + b * H, cb, out + row * H,
                                     saved + row * SH);
      } else {
        Cell::template forward<false>(H, gi + row * GH, gh + b * GH, b_hh, h + b * H, cb, out + row * H,
                                      static_cast<T*>(nullptr));
      }
    }
  }
}

// Backward over all steps, in the reverse of the forward's order.
//   saved, out     what the forward saved and returned
//   h0, c0         (B, H) initial states, or nullptr for zeros; zeros (H) is a row of zeros
//   grad_out       (N, H) gradient of out
//   dh, dc         (B, H) gradients of the final states on entry, of the initial states on exit
//   dgi, dgh       (N, G*H) gradients of the input and recurrent pre-activations (dgh may alias dgi
//                  when the cell says they are equal: Cell::kSameGateGrads)
//   h_prev         (N, H) filled with each row's previous h, for dW_hh = dgh^T h_prev
template <typename Cell, typename T>
void recurrence_backward(const SeqLayout& L, int64_t H, const T* w_hh, const T* saved, const T* out,
                         const T* h0, const T* c0, const T* zeros, const T* grad_out, T* dh, T* dc, T* dgi,
                         T* dgh, T* h_prev) {
  const int64_t GH = Cell::kGates * H, SH = Cell::kSaved * H;
  for (int64_t s = L.T - 1; s >= 0; --s) {
    const int64_t t = L.time(s), bs = L.batch_sizes[t], off = L.offsets[t];
    int64_t bs_prev = 0, off_prev = 0;
    if (s > 0) {
      const int64_t tp = L.time(s - 1);
      bs_prev = L.batch_sizes[tp];
      off_prev = L.offsets[tp];
    }
    const int64_t from_prev = std::min(bs, bs_prev);  // rows whose previous state is the previous step's
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t row = off + b;
      const bool has_prev = b < from_prev;
      const T* hp = has_prev ? out + (off_prev + b) * H : (h0 ? h0 + b * H : zeros);
      const T* prev_saved = has_prev ? saved + (off_prev + b) * SH : nullptr;
      const T* c_init = c0 ? c0 + b * H : zeros;
      std::memcpy(h_prev + row * H, hp, sizeof(T) * H);
      T* dh_b = dh + b * H;
      const T* go = grad_out + row * H;
      for (int64_t j = 0; j < H; ++j) dh_b[j] += go[j];
      Cell::backward(H, saved + row * SH, out + row * H, hp, prev_saved, c_init, dh_b,
                     Cell::kHasCell ? dc + b * H : nullptr, dgi + row * GH, dgh + row * GH);
    }
    // dh_{t-1} = (direct term left in dh by the cell) + dgates_h @ W_hh
    gemm<T>(false, false, bs, H, GH, T(1), dgh + off * GH, GH, w_hh, H, Cell::kDirectDh ? T(1) : T(0), dh,
            H);
  }
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
