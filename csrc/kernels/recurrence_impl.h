#pragma once
// The time loop shared by every recurrent cell, on raw pointers (no at::Tensor, no allocation inside).
//
// A sequence is N rows in time-major order: the rows of time t are [offset(t), offset(t) + rows(t)),
// and rows(t) is non-increasing. A padded (T, B, .) sequence is the case rows(t) == B; a
// PackedSequence is the general case. At every step only the first rows(t) batch rows advance;
// the others keep their state, so a row's final state is the one after its own last step, as in torch.nn.
// A reverse layer walks time from T-1 to 0; a row that becomes active then starts from its initial state.
//
// A cell policy (cells.h) supplies the pointwise math for one batch row, and its constants (cell_traits.h):
//   forward(H, gi, gh, b_hh, h_prev, c, out, saved)
//   backward(H, saved, h_new, h_prev, prev_saved, c_init, dh, dc, dgi, dgh)
// This header is compiled once per CPU capability (recurrence_{base,avx2,avx512}.cpp), so its
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

// C(M, N) = A(M, K) op(B)(K, N) (+ C when accumulate), A and C row-major: M of a time step's `rows`
// active rows. op(B) is B (K, N) row-major, or B stored (N, K) when trans_b (a weight as torch stores it,
// in the forward step). The kernel is chosen by the step's row count, never by M (a share of them), so
// a row's result is the same however the rows are shared out: one row goes to the single-row kernels of
// small_gemm.h; up to max_rows rows (packed_step_max_rows) to packed_gemm on a packed copy of op(B) (when
// the layer made one), whose outputs do not depend on the other rows; more to BLAS (blas_product: only
// reached at 1 thread, or on MKL for steps not shared out: unshared_steps_on_mkl).
template <typename T>
inline void step_product(bool trans_b, int64_t rows, int64_t M, int64_t N, int64_t K, const T* A, const T* B,
                         const T* B_packed, int64_t max_rows, T* C, bool accumulate) {
  if (rows == 1 && trans_b) {
    small_gemv_nt<T>(N, K, A, B, K, C, accumulate);
  } else if (rows == 1 && !trans_b) {
    small_gemv<T>(N, K, A, B, N, C, accumulate);
  } else if (B_packed && rows <= max_rows) {
    packed_gemm<T>(M, N, K, A, K, 1, MatrixB<T>{B_packed, 0, 0, true}, C, N, accumulate);
  } else {
    blas_product<T>(false, trans_b, M, N, K, A, K, B, trans_b ? K : N, C, N, accumulate);
  }
}

// The steps rows [0, b) of L are active in: their share of the time loop's work.
inline int64_t rows_work(const SeqLayout& L, int64_t b) {
  int64_t work = 0;
  for (int64_t t = 0; t < L.T; ++t) work += std::min(L.rows(t), b);
  return work;
}

// Runs f(r0, r1) over L's batch rows [0, B) (B = the first step's rows, the most): split over torch's
// threads when `split`, else once. A row's recurrence reads only its own state, so each share runs every
// time step on its own, with no synchronisation between steps (only its products' inner parallel_for,
// which then runs inline). A padded sequence's rows all run T steps: equal numbers of rows per thread. A
// packed one's rows are sorted longest first, so equal numbers of rows would give the first share the
// most steps (lengths uniform in [T/4, T] at 2 threads: 67-69% of them, and 1.07-1.25x the time of
// equal lengths): its shares end where the rows' cumulative steps reach an equal part of the total,
// found by bisection per share (no allocation).
template <typename F>
inline void for_row_shares(const SeqLayout& L, bool split, const F& f) {
  const int64_t B = L.T > 0 ? L.rows(0) : 0;
  if (B == 0) return;  // no rows at any step (batch sizes do not increase): however long T, nothing to do
  if (!split || B == 1) {
    f(0, B);
  } else if (!L.batch_sizes) {
    at::parallel_for(0, B, 1, f);
  } else {
    const int64_t shares = std::min<int64_t>(at::get_num_threads(), B), total = rows_work(L, B);
    auto bound = [&](int64_t k) {  // the fewest rows whose steps reach k / shares of the total
      int64_t lo = 0, hi = B;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (rows_work(L, mid) * shares >= k * total) hi = mid; else lo = mid + 1;
      }
      return lo;
    };
    at::parallel_for(0, shares, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = bound(k), r1 = bound(k + 1);
        if (r0 < r1) f(r0, r1);
      }
    });
  }
}

// Runs f(b) for the rows b in [lo, hi) of one backward step: over torch's threads when the layer's rows
// are not shared out (split false: one time step, or steps with large products, on MKL from 2 threads up;
// recurrence.h) and the step has kParallelStepMinElems hidden elements or more, else in turn. Without it
// the cells' pointwise backward of such a step runs on one thread between its products. A row reads and
// writes its own rows only, so the split changes no value. 2 threads, one process, forward+backward ms
// (rows over threads / in turn): LSTM (50, 64, 512, 512) 148.9 / 155.0, in float64 383.0 / 415.5; RNN
// float64 88.4 / 92.1. The forward keeps its rows in turn: there the same split measured 2-8% slower (LSTM
// 54.6 / 53.4, float64 148.9 / 143.1), its loop prefetching the next step's rows into its own core.
constexpr int64_t kParallelStepMinElems = 8192;
template <typename F>
inline void for_step_rows(bool split, int64_t lo, int64_t hi, int64_t H, const F& f) {
  if (!split && at::get_num_threads() > 1 && (hi - lo) * H >= kParallelStepMinElems) {
    at::parallel_for(lo, hi, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b);
    });
  } else {
    for (int64_t b = lo; b < hi; ++b) f(b);
  }
}

// How many of the batch rows [r0, r1) (a share of for_row_shares) are active at step s of L: rows
// r0 .. r0 + share_rows (none when <= 0, or when s is outside [0, T)).
inline int64_t share_rows(const SeqLayout& L, int64_t s, int64_t r0, int64_t r1) {
  return s < 0 || s >= L.T ? 0 : std::min(L.rows(L.time(s)), r1) - r0;
}

// Forward over all steps (arguments: ForwardArgs in recurrence.h).
template <typename Cell, typename T>
void recurrence_forward(const SeqLayout& L, const ForwardArgs<T>& a) {
  const int64_t H = a.H, P = a.P, GH = Cell::kGates * H, SH = Cell::kSaved * H;
  // op(B) of the steps' products: W_hh^T (P, GH) and W_hr^T (H, P).
  if (a.w_hh_packed) pack_b<T>(P, GH, a.w_hh, 1, P, a.w_hh_packed);
  if (a.w_hr && a.w_hr_packed) pack_b<T>(H, P, a.w_hr, 1, H, a.w_hr_packed);
  for_row_shares(L, a.split_rows, [&](int64_t r0, int64_t r1) {
    auto active = [&](int64_t s) { return share_rows(L, s, r0, r1); };
    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.time(s), bs = L.rows(t), n = active(s);
      if (n <= 0) continue;
      const int64_t off = L.offset(t);
      // The state this step starts from: the previous step's output rows when they cover this step's
      // (always, except where a reverse packed sequence gains rows), else h, kept for that below.
      const T* hp = active(s - 1) >= n ? a.out + (L.offset(L.time(s - 1)) + r0) * P : a.h + r0 * P;
      // LSTM and RNN sum the two products: the recurrent one accumulates into gi's rows of this step.
      // GRU needs it apart (r scales its n block): it accumulates onto rows of b_hh. Either way the
      // product adds to C rather than first clearing it (OpenBLAS's separate beta = 0 pass measured 8%
      // of a 32 x 1024 x 256 step).
      if constexpr (Cell::kSameGateGrads) {
        step_product<T>(true, bs, n, GH, P, hp, a.w_hh, a.w_hh_packed, a.packed_max_rows, a.gi + (off + r0) * GH,
                        true);
      } else {
        for (int64_t b = 0; b < n; ++b) std::memcpy(a.gh + (r0 + b) * GH, a.b_hh, sizeof(T) * GH);
        step_product<T>(true, bs, n, GH, P, hp, a.w_hh, a.w_hh_packed, a.packed_max_rows, a.gh + r0 * GH, true);
      }
      if (s + 1 < L.T) {  // next step's rows of gi, written long ago by the input projection: fetch them now
        const char* p = reinterpret_cast<const char*>(a.gi + (L.offset(L.time(s + 1)) + r0) * GH);
        const int64_t bytes = std::max<int64_t>(active(s + 1), 0) * GH * static_cast<int64_t>(sizeof(T));
        for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 1);
      }
      for (int64_t b = r0; b < r0 + n; ++b) {
        const int64_t row = off + b;
        const T* gh = Cell::kSameGateGrads ? nullptr : a.gh + b * GH;
        const T* h_prev = hp + (b - r0) * P;
        T* c = Cell::kHasCell ? a.c + b * H : nullptr;
        // With a projection the cell writes o * tanh(c') into m; the product below makes h from it.
        T* out = a.w_hr ? a.m + b * H : a.out + row * P;
        if (a.saved) {
          Cell::template forward<true>(H, a.gi + row * GH, gh, a.b_hh, h_prev, c, out, a.saved + row * SH);
        } else {
          Cell::template forward<false>(H, a.gi + row * GH, gh, a.b_hh, h_prev, c, out, static_cast<T*>(nullptr));
        }
      }
      if (a.w_hr) {
        step_product<T>(true, bs, n, P, H, a.m + r0 * H, a.w_hr, a.w_hr_packed, a.packed_max_rows,
                        a.out + (off + r0) * P, false);
      }
      // h gets the new state of the rows no later step reads from out (measured: copying every step's
      // rows cost 2-5% of a (100, 32, 256, 256) GRU or RNN forward at 1 thread): those whose last step
      // this is (all, at the last step), or all of them when the next step has more rows (it reads h).
      const int64_t n_next = active(s + 1);
      const int64_t keep = n_next > n ? 0 : std::max<int64_t>(n_next, 0);  // rows r0 .. r0 + keep stay in out
      std::memcpy(a.h + (r0 + keep) * P, a.out + (off + r0 + keep) * P, sizeof(T) * (n - keep) * P);
    }
  });
}

// Backward over all steps, in the reverse of the forward's order (arguments: BackwardArgs).
template <typename Cell, typename T>
void recurrence_backward(const SeqLayout& L, const BackwardArgs<T>& a) {
  const int64_t H = a.H, P = a.P, GH = Cell::kGates * H, SH = Cell::kSaved * H;
  // op(B) of the steps' products: W_hh (GH, P) and W_hr (P, H), as stored.
  if (a.w_hh_packed) pack_b<T>(GH, P, a.w_hh, P, 1, a.w_hh_packed);
  if (a.w_hr && a.w_hr_packed) pack_b<T>(P, H, a.w_hr, H, 1, a.w_hr_packed);
  for_row_shares(L, a.split_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t s = L.T - 1; s >= 0; --s) {
      const int64_t t = L.time(s), bs = L.rows(t);
      const int64_t n = share_rows(L, s, r0, r1);
      if (n <= 0) continue;
      const int64_t off = L.offset(t);
      int64_t bs_prev = 0, off_prev = 0;
      if (s > 0) {
        const int64_t tp = L.time(s - 1);
        bs_prev = L.rows(tp);
        off_prev = L.offset(tp);
      }
      for (int64_t b = r0; b < r0 + n; ++b) {  // total gradient of each active row's h
        T* dh = a.dh + b * P;
        const T* go = a.grad_out + off * a.go_row + t * a.go_time + b * a.go_batch;
        if (a.go_col == 1) {
          for (int64_t j = 0; j < P; ++j) dh[j] += go[j];
        } else {
          for (int64_t j = 0; j < P; ++j) dh[j] += go[j * a.go_col];
        }
      }
      if (a.w_hr) {  // through the projection: dm = dh W_hr
        std::memcpy(a.dh_all + (off + r0) * P, a.dh + r0 * P, sizeof(T) * n * P);
        step_product<T>(false, bs, n, H, P, a.dh + r0 * P, a.w_hr, a.w_hr_packed, a.packed_max_rows,
                        a.dm + r0 * H, false);
      }
      const int64_t from_prev = std::min(bs, bs_prev);  // rows whose previous state is the previous step's
      for_step_rows(a.split_rows, r0, r0 + n, H, [&](int64_t b) {
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
      });
      // dh_{t-1} = (direct term the cell left in dh) + dgates_h W_hh
      const T* dgates = Cell::kSameGateGrads ? a.dgi + (off + r0) * GH : a.dgh_step + r0 * GH;
      step_product<T>(false, bs, n, P, GH, dgates, a.w_hh, a.w_hh_packed, a.packed_max_rows, a.dh + r0 * P,
                      Cell::kDirectDh);
    }
  });
}

// The recurrent products alone (arguments: step_products in recurrence.h), as the time loops make them.
template <typename T>
void recurrence_step_products(const SeqLayout& L, int64_t N, int64_t K, const T* A, const T* W, bool trans_b,
                              T* C) {
  const int64_t step_macs = (L.T > 0 ? L.rows(0) : 0) * N * K;
  const int64_t max_rows = packed_step_max_rows(L, step_macs);
  const Scratch<T> packed(uses_packed_weights(L, max_rows) ? packed_b_size<T>(K, N) : 0);
  if (packed.get()) pack_b<T>(K, N, W, trans_b ? 1 : N, trans_b ? K : 1, packed.get());
  for_row_shares(L, split_batch_rows(L, step_macs), [&](int64_t r0, int64_t r1) {
    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.time(s), bs = L.rows(t), n = share_rows(L, s, r0, r1), row = L.offset(t) + r0;
      if (n > 0) step_product<T>(trans_b, bs, n, N, K, A + row * K, W, packed.get(), max_rows, C + row * N, true);
    }
  });
}

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
