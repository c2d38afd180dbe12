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
//   forward(H, gi, gh, b_hh, h_prev, c, out, saved)
//   backward(H, saved, h_new, h_prev, prev_saved, c_init, dh, dc, dgi, dgh)
// This header is compiled once per CPU capability (recurrence_base.cpp, recurrence_avx2.cpp), so its
// templates live in the namespace TRE_CPU_CAPABILITY and never merge across capabilities.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cell_traits.h"
#include "kernels/cells.h"
#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "kernels/recurrence.h"
#include "kernels/small_gemm.h"
#include "kernels/vec_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

// C(M, N) = A(M, K) op(B)(K, N) (+ C when accumulate), A and C row-major: a time step's product. op(B) is
// B (K, N) row-major, or B stored (N, K) when trans_b (a weight as torch stores it, in the forward step).
// One row goes to the single-row kernels of small_gemm.h; up to max_rows rows (packed_step_max_rows) to
// packed_gemm on a packed copy of op(B) (when the layer made one); more to BLAS.
template <typename T>
inline void step_product(bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, const T* B,
                         const T* B_packed, int64_t max_rows, T* C, bool accumulate) {
  if (M == 1 && trans_b) {
    small_gemv_nt<T>(N, K, A, B, K, C, accumulate);
  } else if (M == 1 && !trans_b) {
    small_gemv<T>(N, K, A, B, N, C, accumulate);
  } else if (B_packed && M <= max_rows) {
    packed_gemm<T>(M, N, K, A, K, 1, MatrixB<T>{B_packed, 0, 0, true}, C, N, accumulate);
  } else {
    gemm<T>(false, trans_b, M, N, K, T(1), A, K, B, trans_b ? K : N, accumulate ? T(1) : T(0), C, N);
  }
}

// Forward over all steps (arguments: ForwardArgs in recurrence.h).
template <typename Cell, typename T>
void recurrence_forward(const SeqLayout& L, const ForwardArgs<T>& a) {
  const int64_t H = a.H, P = a.P, GH = Cell::kGates * H, SH = Cell::kSaved * H;
  // op(B) of the steps' products: W_hh^T (P, GH) and W_hr^T (H, P).
  if (a.w_hh_packed) pack_b<T>(P, GH, a.w_hh, 1, P, a.w_hh_packed);
  if (a.w_hr && a.w_hr_packed) pack_b<T>(H, P, a.w_hr, 1, H, a.w_hr_packed);
  for (int64_t s = 0; s < L.T; ++s) {
    const int64_t t = L.time(s), bs = L.batch_sizes[t], off = L.offsets[t];
    // LSTM and RNN sum the two products: the recurrent one accumulates into gi's rows of this step.
    // GRU needs it apart (r scales its n block): it accumulates onto rows of b_hh. Either way the
    // product adds to C rather than first clearing it (OpenBLAS's separate beta = 0 pass measured 8% of
    // a 32 x 1024 x 256 step).
    if constexpr (Cell::kSameGateGrads) {
      step_product<T>(true, bs, GH, P, a.h, a.w_hh, a.w_hh_packed, a.packed_max_rows, a.gi + off * GH, true);
    } else {
      for (int64_t b = 0; b < bs; ++b) std::memcpy(a.gh + b * GH, a.b_hh, sizeof(T) * GH);
      step_product<T>(true, bs, GH, P, a.h, a.w_hh, a.w_hh_packed, a.packed_max_rows, a.gh, true);
    }
    if (s + 1 < L.T) {  // next step's rows of gi, written long ago by the input projection: fetch them now
      const int64_t tn = L.time(s + 1);
      const char* p = reinterpret_cast<const char*>(a.gi + L.offsets[tn] * GH);
      const int64_t bytes = L.batch_sizes[tn] * GH * static_cast<int64_t>(sizeof(T));
      for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 1);
    }
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t row = off + b;
      const T* gh = Cell::kSameGateGrads ? nullptr : a.gh + b * GH;
      T* c = Cell::kHasCell ? a.c + b * H : nullptr;
      // With a projection the cell writes o * tanh(c') into m; the product below makes h from it.
      T* out = a.w_hr ? a.m + b * H : a.out + row * P;
      if (a.saved) {
        Cell::template forward<true>(H, a.gi + row * GH, gh, a.b_hh, a.h + b * P, c, out, a.saved + row * SH);
      } else {
        Cell::template forward<false>(H, a.gi + row * GH, gh, a.b_hh, a.h + b * P, c, out,
                                      static_cast<T*>(nullptr));
      }
    }
    if (a.w_hr) step_product<T>(true, bs, P, H, a.m, a.w_hr, a.w_hr_packed, a.packed_max_rows, a.out + off * P, false);
    std::memcpy(a.h, a.out + off * P, sizeof(T) * bs * P);  // the new state of the active rows
  }
}

// Backward over all steps, in the reverse of the forward's order (arguments: BackwardArgs).
template <typename Cell, typename T>
void recurrence_backward(const SeqLayout& L, const BackwardArgs<T>& a) {
  const int64_t H = a.H, P = a.P, GH = Cell::kGates * H, SH = Cell::kSaved * H;
  // op(B) of the steps' products: W_hh (GH, P) and W_hr (P, H), as stored.
  if (a.w_hh_packed) pack_b<T>(GH, P, a.w_hh, P, 1, a.w_hh_packed);
  if (a.w_hr && a.w_hr_packed) pack_b<T>(P, H, a.w_hr, H, 1, a.w_hr_packed);
  for (int64_t s = L.T - 1; s >= 0; --s) {
    const int64_t t = L.time(s), bs = L.batch_sizes[t], off = L.offsets[t];
    int64_t bs_prev = 0, off_prev = 0;
    if (s > 0) {
      const int64_t tp = L.time(s - 1);
      bs_prev = L.batch_sizes[tp];
      off_prev = L.offsets[tp];
    }
    for (int64_t b = 0; b < bs; ++b) {  // total gradient of each active row's h
      T* dh = a.dh + b * P;
      const T* go = a.grad_out + (off + b) * P;
      for (int64_t j = 0; j < P; ++j) dh[j] += go[j];
    }
    if (a.w_hr) {  // through the projection: dm = dh W_hr
      std::memcpy(a.dh_all + off * P, a.dh, sizeof(T) * bs * P);
      step_product<T>(false, bs, H, P, a.dh, a.w_hr, a.w_hr_packed, a.packed_max_rows, a.dm, false);
    }
    const int64_t from_prev = std::min(bs, bs_prev);  // rows whose previous state is the previous step's
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t row = off + b;
      const bool has_prev = b < from_prev;
      const T* hp = has_prev ? a.out + (off_prev + b) * P : (a.h0 ? a.h0 + b * P : a.zeros);
      const T* prev_saved = has_prev ? a.saved + (off_prev + b) * SH : nullptr;
      const T* c_init = a.c0 ? a.c0 + b * H : a.zeros;
      if (a.h_prev) std::memcpy(a.h_prev + row * P, hp, sizeof(T) * P);
      T* dh = a.w_hr ? a.dm + b * H : a.dh + b * P;
      T* dgh = Cell::kSameGateGrads ? nullptr : a.dgh_step + b * GH;
      Cell::backward(H, a.saved + row * SH, a.out + row * P, hp, prev_saved, c_init, dh,
                     Cell::kHasCell ? a.dc + b * H : nullptr, a.dgi + row * GH, dgh);
      if constexpr (!Cell::kSameGateGrads) {  // keep the block that differs from dgi, for dW_hh and b_hh
        constexpr int64_t kOwn = Cell::kOwnGates;
        std::memcpy(a.dgh_own + row * kOwn * H, dgh + GH - kOwn * H, sizeof(T) * kOwn * H);
      }
      if constexpr (Cell::kHasCell) {
        if (a.w_hr) Cell::projected(H, a.saved + row * SH, a.m_all + row * H);
      }
    }
    // dh_{t-1} = (direct term the cell left in dh) + dgates_h W_hh
    step_product<T>(false, bs, P, GH, Cell::kSameGateGrads ? a.dgi + off * GH : a.dgh_step, a.w_hh,
                    a.w_hh_packed, a.packed_max_rows, a.dh, Cell::kDirectDh);
  }
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
