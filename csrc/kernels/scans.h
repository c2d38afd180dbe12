#pragma once
// The API of the linear-time scans (selective_scan, wkv4) on raw pointers, independent of CPU capability:
// the ATen binding calls these; they run the variant compiled for the best instruction set this CPU has
// (scans.cpp; the loops are in selective_scan.h and wkv4.h).
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

// Steps between saved states: backward keeps the state at every kChunk-th step and recomputes the
// steps in between, so its memory does not grow as L x state size. Forward also works chunk by chunk.
constexpr int64_t kChunk = 64;

inline int64_t num_chunks(int64_t L) { return (L + kChunk - 1) / kChunk; }

// ---- selective_scan (Mamba S6), one (batch, channel) row:
//   delta'_t = softplus(delta_t + bias) if softplus else delta_t + bias
//   h_t      = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t          (h, A, B_t, C_t of length N)
//   y_t      = sum_n C_t[n] h_t[n] + D u_t;   out_t = y_t * silu(z_t) when z is given

// y = s + D u, the skip term, as one rounding (std::fma: the same bits whatever the compiler would
// contract around it), or s + 0 without one (not 0 * u, which is NaN for an infinite u). Every path that
// adds it (full scan, short-scan blocks, decode step) calls this, so their bits agree.
template <typename T>
inline T plus_skip(T s, bool has_D, T D, T u) { return has_D ? std::fma(D, u, s) : s + T(0); }

// One channel's inputs. u, delta, z are contiguous in time; B_t = B + t * b_step (b_step = N for
// inputs that vary in time, laid out (L, N); 0 for a constant (N) row), likewise C.
template <typename T>
struct ScanChannel {
  int64_t L, N;
  const T* u;
  const T* delta;
  const T* z;  // nullptr: no gate
  const T* A;
  const T* B;
  int64_t b_step;
  const T* C;
  int64_t c_step;
  T D;
  T delta_bias;
  bool softplus;
  bool has_D = true;  // false: no skip term (not 0 * u, which is NaN for an infinite u)
  T add_skip(T s, int64_t t) const { return plus_skip(s, has_D, D, u[t]); }
};

// Where one channel's gradients go. gu, gdelta, gz (L) are written; gz may be nullptr (no z). gA (N),
// gD, gdelta_bias are accumulated; gB_t = gB + t * gb_step is accumulated (gb_step as b_step), likewise gC.
template <typename T>
struct ScanChannelGrads {
  T* gu;
  T* gdelta;
  T* gz;
  T* gA;
  T* gB;
  int64_t gb_step;
  T* gC;
  int64_t gc_step;
  T* gD;
  T* gdelta_bias;
};

// Forward of one channel. h (N): the initial state on entry, the last state on exit. out (L).
// checkpoints (num_chunks(L), N) or nullptr: the state before each chunk of kChunk steps.
template <typename T>
void selective_scan_forward(const ScanChannel<T>& p, T* h, T* out, T* checkpoints);

// A short scan (1 <= L <= kChunk: one chunk) of `count` consecutive channels of one batch row. u, delta, z
// (or nullptr) and out hold channel i's L steps at [i L, (i + 1) L) (the layout of a scan's rows), D and
// delta_bias (or nullptr) channel i's value at index i. Channel i reads A + i N, and B_t at
// B + i b_stride + t b_step (a varying B: b_stride 0, b_step N, the block sharing one (L, N) sequence; a
// constant one: b_stride N, b_step 0), likewise C. It writes its state after the scan to h + i N from the
// one before at h_in + i N (a buffer apart from h: the caller's new state tensor, so that the old one is read
// once and not cloned first).
// Gives each channel the bits selective_scan_forward gives it (the same expressions), with the per-step
// scalar work (softplus, gate) done in loops across the block's channels, which vectorise however short L
// is: the streaming decode step (L = 1) and short scans (chunked prefill, speculative decoding).
template <typename T>
struct ScanBlock {
  int64_t count, N, L;
  const T* u;
  const T* delta;
  const T* z;
  const T* A;
  const T* B;
  int64_t b_stride, b_step;
  const T* C;
  int64_t c_stride, c_step;
  const T* D;
  const T* delta_bias;
  bool softplus;
};

template <typename T>
void selective_scan_block(const ScanBlock<T>& p, const T* h_in, T* h, T* out);

// Values of workspace selective_scan_backward needs.
inline int64_t selective_scan_backward_workspace(int64_t N) { return 2 * kChunk * N; }

// Backward of one channel. grad_out (L) or nullptr (zero). gh (N): the gradient of the last state on
// entry (zeros when it has none), of the initial state on exit. checkpoints as saved by the forward.
template <typename T>
void selective_scan_backward(const ScanChannel<T>& p, const T* checkpoints, const T* grad_out, T* gh,
                             const ScanChannelGrads<T>& g, T* workspace);

// ---- wkv4 (RWKV-4), a block of channels of one batch row (see wkv4.h for the recurrence).

// pp of the empty state: exp(pp - anything finite) is 0.
constexpr double kWkvEmptyPP = -1e38;

// Channels of a block at most.
constexpr int64_t kWkvMaxWidth = 64;

// A block of `width` (<= kWkvMaxWidth) channels: k and v hold step t at k + t * stride; u = time_first.
// The kernels compute w = -exp(time_decay) themselves: a decode step is short enough that two more ATen
// ops per call would take a third of its time.
template <typename T>
struct WkvBlock {
  int64_t T_, width, stride;
  const T* time_decay;
  const T* u;
  const T* k;
  const T* v;
};

// The three rows of a state (aa, bb, pp), each `width` channels.
template <typename T>
struct WkvState {
  T* aa;
  T* bb;
  T* pp;
  WkvState at(int64_t offset) const { return {aa + offset, bb + offset, pp + offset}; }
};

// Forward. s: the initial state on entry, the last on exit. y step t at y + t * stride.
// checkpoints: the state before each chunk of kChunk steps, chunk c at checkpoints.at(c * chunk_stride),
// or checkpoints.aa == nullptr.
template <typename T>
void wkv4_forward(const WkvBlock<T>& p, const WkvState<T>& s, T* y, const WkvState<T>& checkpoints,
                  int64_t chunk_stride);

// Values of workspace wkv4_backward needs for a block of `width` channels.
inline int64_t wkv4_backward_workspace(int64_t width) { return 3 * kChunk * width; }

// Backward. grad_y (step t at grad_y + t * stride) or nullptr. gs: the gradient of the last state on
// entry (zeros when it has none), of the initial state on exit. gk, gv written like y; gdecay, gu (width)
// written (gradients of time_decay and u).
template <typename T>
void wkv4_backward(const WkvBlock<T>& p, const WkvState<T>& checkpoints, int64_t chunk_stride,
                   const T* grad_y, const WkvState<T>& gs, T* gk, T* gv, T* gdecay, T* gu, T* workspace);

// ---- gated delta rule (Gated DeltaNet), one value head of one sequence (see delta_rule.h):
//   S' = a_t S_{t-1}  (a_t = exp(g_t): one value, or one per key row; 1 without gate)
//   p  = S'^T k_t,  u = beta_t (v_t - p),  S_t = S' + k_t u^T,  o_t = S_t^T (scale q_t)
// S is (K, V), key-first. Its columns are independent of each other, so a head runs as panels of
// kDeltaWidth columns, each held in a contiguous (K, kDeltaWidth) buffer in cache for the whole sequence.
constexpr int64_t kDeltaWidth = 16;

// One panel's inputs: columns [0, width) of the value head's panel (width <= kDeltaWidth). q and k step t
// at q + t * qk_stride (K values), v at v + t * v_stride (the panel's width values), decay (exp(g)) at
// decay + t * decay_stride (K values when per_key, else 1; nullptr: no gate), beta at beta + t * beta_stride.
// t0 is the global position of step 0 (states are saved at global positions that are multiples of kChunk).
template <typename T>
struct DeltaPanel {
  int64_t steps, t0, K, width;
  const T* q;
  const T* k;
  int64_t qk_stride;
  const T* v;
  int64_t v_stride;
  const T* decay;
  int64_t decay_stride;
  bool per_key;
  const T* beta;
  int64_t beta_stride;
  T scale;
};

// Where a panel's states live: rows of the panel at state + i * row_stride (width values each). init and
// checkpoints are read, last and checkpoints written; checkpoint c (the state before global step c kChunk)
// at checkpoints + c * chunk_stride.
template <typename T>
struct DeltaStates {
  const T* init;  // nullptr: zeros
  int64_t row_stride;
  T* checkpoints;  // nullptr: not saved (forward) / required (backward)
  int64_t chunk_stride;
  // The forward's running decay factor: between the calls of one sequence the state is *factor times the
  // rows in last (see delta_rule.h). nullptr: 1 on entry. settle: the rows are the state on exit.
  T* factor = nullptr;
  bool settle = true;
  // The backward's hint: the rows (at + i * row_stride) the next call will load, asked for from memory
  // while this one runs. nullptr: none.
  const T* next = nullptr;
};

inline int64_t delta_rule_forward_workspace(int64_t K) { return K * kDeltaWidth; }

// Forward of one panel: o step t at o + t * o_stride (width values); last (rows at last + i * row_stride)
// gets the state after the last step.
template <typename T>
void delta_rule_forward(const DeltaPanel<T>& p, const DeltaStates<T>& s, T* last, T* o, int64_t o_stride,
                        T* workspace);

// Where one panel's gradients go. dq, dk (K values per step, step t at + t * dqk_stride), dg (K or 1 per
// step) and dbeta are accumulated (+=: the panels of a head add up into them, in panel order); dv (width
// per step) and d_init (rows at + i * row_stride) are written.
template <typename T>
struct DeltaGrads {
  T* dq;
  T* dk;
  int64_t dqk_stride;
  T* dv;
  int64_t dv_stride;
  T* dg;  // nullptr: no gate
  int64_t dg_stride;
  T* dbeta;
  int64_t dbeta_stride;
  T* d_init;
};

// The backward holds a panel transposed, each of its columns as delta_padded_rows(K) values (a multiple of
// kDeltaRowPad, zero past K).
constexpr int64_t kDeltaRowPad = 32;
inline int64_t delta_padded_rows(int64_t K) { return (K + kDeltaRowPad - 1) / kDeltaRowPad * kDeltaRowPad; }
// The backward's state gradient of one panel (the caller's, carried from chunk to chunk).
inline int64_t delta_rule_state_gradient_size(int64_t K) { return kDeltaWidth * delta_padded_rows(K); }
inline int64_t delta_rule_backward_workspace(int64_t K) {
  return (kChunk + 1) * delta_rule_state_gradient_size(K) + kChunk * kDeltaWidth + 9 * delta_padded_rows(K);
}

// Backward of one chunk of a panel (p.steps <= kChunk steps, from global step p.t0: the sequence's first
// step or a multiple of kChunk), from the state before it: s.init when the chunk starts the sequence, else
// checkpoint p.t0 / kChunk. dS (delta_rule_state_gradient_size(K) values, the caller's, one per panel)
// carries the gradient of the state from chunk to chunk: after the chunk's last step on entry (grad_last,
// rows at + i * row_stride or nullptr for zeros, is loaded into it first when the chunk ends the
// sequence), before its first step on exit (and written to g.d_init when the chunk starts the sequence).
// grad_o: step t, column j at + t * o_stride + j * o_col_stride (any strides, 0 included), or nullptr.
// Calling every panel of a head for one chunk before the next keeps that chunk's dq and dk in cache.
template <typename T>
void delta_rule_backward(const DeltaPanel<T>& p, const DeltaStates<T>& s, const T* grad_o, int64_t o_stride,
                         int64_t o_col_stride, const T* grad_last, bool ends_sequence, bool starts_sequence,
                         const DeltaGrads<T>& g, T* dS, T* workspace);

}  // namespace kernels
}  // namespace torch_rnn_ext
