#pragma once
// The API of the recurrent time loop, independent of CPU capability: the ATen binding layer calls these;
// they run the variant compiled for the best instruction set this CPU has (recurrence.cpp).
#include <cstdint>

#include "kernels/cell_traits.h"
#include "kernels/cpu_capability.h"  // cpu_capability(): the instruction set the time loops run with

namespace torch_rnn_ext {
namespace kernels {

// A sequence of N rows in time-major order: the rows of time t are [offset(t), offset(t) + rows(t)),
// rows non-increasing (see recurrence_impl.h). A packed sequence gives them per step (batch_sizes and
// offsets, [T] each); a padded one has `batch` rows at every step and no arrays (nullptr), so its layout
// costs nothing however long the sequence is.
struct SeqLayout {
  const int64_t* batch_sizes;  // [T], or nullptr: `batch` rows at every step
  const int64_t* offsets;      // [T], or nullptr likewise
  int64_t T;
  bool reverse;
  int64_t batch = 0;  // rows per step of a padded sequence
  int64_t time(int64_t step) const { return reverse ? T - 1 - step : step; }
  int64_t rows(int64_t t) const { return batch_sizes ? batch_sizes[t] : batch; }
  int64_t offset(int64_t t) const { return offsets ? offsets[t] : t * batch; }
};

// Time steps with 2..kPackedStepMaxRows active rows multiply by packed copies of the weights (the kernel
// packs them into the w_*_packed buffers the caller provides): one-thread packed_gemm tiles there beat
// BLAS, whose thread wake-ups cost more than such a product (measured, 8 x 512 x 128: 9.9 us against
// OpenBLAS's 15.9 us on 2 threads; 16 x 1024 x 256: 77 us against 72 us, and 40 us against 72 at 2 torch
// threads). One row uses the single-row kernels of small_gemm.h, more rows BLAS while
// large_products_on_blas() (gemm.h), else packed_gemm as well.
constexpr int64_t kPackedStepMaxRows = 16;

// The most rows a step multiplies by packed weights: kPackedStepMaxRows, or all when
// !large_products_on_blas() and not unshared_steps_on_mkl. Read once per layer call, so one call never
// mixes the two. step_macs: the multiply-adds of the first step's recurrent product (rows x G*H x P).
int64_t packed_step_max_rows(const SeqLayout& L, int64_t step_macs);

// Whether, on MKL from 2 torch threads up, L's steps run with their rows not shared out over the threads
// (split_batch_rows), each step of more than kPackedStepMaxRows rows multiplying through blas_product
// (gemm.h: fixed blocks over the threads, as bitwise the same at every thread count from 2 up as the shares
// were): when L is one time step (a cell, a streaming step), whose shares each multiplied by a packed copy
// of W_hh made for that one step (LSTMCell(256, 256) at batch 64: 555 us at 2 threads against 458 at 1),
// or when its steps' products are of kUnsharedStepMinMacs or more, where MKL's blocks beat our packed_gemm
// on shares by more than a parallel region per step costs.
bool unshared_steps_on_mkl(const SeqLayout& L, int64_t step_macs);

// 2 threads, in one process, ms (unshared / shares / nn): LSTM (50, 64, 512, 512), a step of 2^26,
// forward 43.2 / 53.8 / 37.1, forward+backward 129.1 / 152.0 / 136.4, in float64 106 / 137 / 116; RNN
// (50, 64, 512, 512), 2^24: 11.6 / 12.6 / 12.3 and 32.8 / 37.0 / 37.9. Below, even or worse: LSTM (100, 32,
// 256, 256), 2^23: forward 14.1 / 13.5, forward+backward 40.8 / 45.5; RNN (100, 32, 256, 256), 2^21: 3.8 /
// 3.7 and 11.1 / 10.5.
constexpr int64_t kUnsharedStepMinMacs = int64_t{1} << 24;

// Whether some step of L has 2..max_rows rows (then pass the packed buffers, of packed_b_size elements:
// packing.h).
bool uses_packed_weights(const SeqLayout& L, int64_t max_rows);

// Whether the time loop shares the batch rows out over torch's threads, each share running every step on
// its own (recurrence_impl.h: for_row_shares): from 2 torch threads up, unless unshared_steps_on_mkl.
// Read once per layer call.
bool split_batch_rows(const SeqLayout& L, int64_t step_macs);

// Sizes: H hidden units, G = kGates, P the size of h (P == H, or the projection size when w_hr is given;
// only LSTM has a projection: h = (o * tanh(c)) W_hr^T).
template <typename T>
struct ForwardArgs {
  int64_t H, P;
  T* gi;          // (N, G*H)  x W_ih^T + b_ih for every row (LSTM, RNN: overwritten, + h W_hh^T; RNN: may be out)
  const T* w_hh;  // (G*H, P)
  const T* b_hh;  // (G*H)     zeros when the layer has no bias
  const T* w_hr;  // (P, H) or nullptr
  T* h;           // (B, P)    initial state on entry, final on exit
  T* c;           // (B, H)    likewise, LSTM only (else nullptr)
  T* out;         // (N, P)    h of every row
  T* saved;       // (N, kSaved*H) what backward needs, or nullptr (inference)
  T* gh;          // (B, G*H)  workspace (GRU only, else nullptr)
  T* m;           // (B, H)    workspace, with w_hr only
  T* w_hh_packed;  // packed_b_size(P, G*H) workspace when uses_packed_weights, else nullptr
  T* w_hr_packed;  // packed_b_size(H, P) workspace when uses_packed_weights and w_hr, else nullptr
  int64_t packed_max_rows;  // packed_step_max_rows() of this call
  bool split_rows;          // split_batch_rows() of this call
};

template <typename T>
struct BackwardArgs {
  int64_t H, P;
  const T* w_hh;      // (G*H, P)
  const T* w_hr;      // (P, H) or nullptr
  const T* saved;     // (N, kSaved*H) from forward
  const T* out;       // (N, P) from forward
  const T* h0;        // (B, P) or nullptr for zeros
  const T* c0;        // (B, H) or nullptr for zeros (LSTM)
  const T* zeros;     // (H) zeros
  // grad of the output, read where it lies: row b of the step whose rows start at off (time t) at
  // grad_out + off * go_row + t * go_time + b * go_batch, its column j j * go_col further (a padded
  // (T, B, P) grad: go_row 0; packed (N, P): go_time 0; an expanded .sum() grad or none: all 0).
  const T* grad_out;
  int64_t go_row, go_time, go_batch, go_col;
  T* dh;              // (B, P) grad of h_n on entry, of h0 on exit
  T* dc;              // (B, H) grad of c_n on entry, of c0 on exit (LSTM)
  T* dgi;             // (N, G*H) grad of the input pre-activations
  T* dgh_step;        // (B, G*H) workspace: a step's recurrent pre-activation grads (kOwnGates > 0 only;
                      //          otherwise they equal dgi's rows)
  T* dgh_own;         // (N, kOwnGates*H) each row's own block of them (the trailing gates), or nullptr
  T* h_prev;          // (N, P) each row's previous h, for dW_hh = dgh^T h_prev
  T* dh_all;          // (N, P) each row's total dh, for dW_hr (w_hr only)
  T* m_all;           // (N, H) each row's o * tanh(c'), for dW_hr (w_hr only)
  T* dm;              // (B, H) workspace (w_hr only)
  T* w_hh_packed;     // packed_b_size(G*H, P) workspace when uses_packed_weights, else nullptr
  T* w_hr_packed;     // packed_b_size(P, H) workspace when uses_packed_weights and w_hr, else nullptr
  int64_t packed_max_rows;  // packed_step_max_rows() of this call
  bool split_rows;          // split_batch_rows() of this call
};

template <CellKind K, typename T>
void forward(const SeqLayout& L, const ForwardArgs<T>& a);

template <CellKind K, typename T>
void backward(const SeqLayout& L, const BackwardArgs<T>& a);

// A time loop's recurrent products alone, for the benchmark's floor (no pointwise work): for every step
// of L, C's rows of that step (N columns) += A's rows of that step (K columns) op(W), where op(W) is W^T
// for W stored (N, K) when trans_b (the forward's h W_hh^T), else W stored (K, N) (the backward's
// dgates W_hh); with the kernels, packed copy and row shares a layer of layout L uses at this thread count.
template <typename T>
void step_products(const SeqLayout& L, int64_t N, int64_t K, const T* A, const T* W, bool trans_b, T* C);

// out[c] = sum over rows of X[r, c], rows in order (deterministic).
template <typename T>
void column_sum(const T* X, int64_t rows, int64_t cols, T* out);

}  // namespace kernels
}  // namespace torch_rnn_ext
