#pragma once
// The ATen side of one recurrent layer on CPU, shared by every cell type: validates the arguments,
// lays out the sequence, does the products that span all timesteps (input projection, input and weight
// gradients) with one kernels::product call each, and hands raw pointers to the time loop in
// kernels/recurrence.h.
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <type_traits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "ops/layer_shapes.h"
#include "kernels/cell_traits.h"
#include "kernels/gemm.h"
#include "kernels/packing.h"  // packed_b_size
#include "kernels/recurrence.h"

namespace torch_rnn_ext {
namespace cpu {

using at::Tensor;

// Sizes of one layer's sequence (ops/layer_shapes.h), with batch_sizes read, and its time layout (see
// kernels/recurrence.h).
struct LayerGeometry : LayerShape<int64_t> {
  std::vector<int64_t> batch_sizes, offsets;  // packed input only: a padded layout needs no arrays
  kernels::SeqLayout layout(bool reverse) const {
    if (!packed) return {nullptr, nullptr, T, reverse, B};
    return {batch_sizes.data(), offsets.data(), T, reverse};
  }
};

// Validates a layer's arguments (ops/layer_shapes.h) and reads batch_sizes: its geometry on CPU.
inline LayerGeometry check_layer(const char* op, const Tensor& input, const Tensor& weight_ih,
                                 const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                 const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr,
                                 const optional<Tensor>& batch_sizes, int64_t gates, bool can_project) {
  LayerGeometry g;
  static_cast<LayerShape<int64_t>&>(g) = check_layer_shape<int64_t>(
      op, at::kCPU, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, gates, can_project);
  if (g.packed) {
    check_cpu(*batch_sizes, "batch_sizes");
    g.B = read_batch_sizes(op, *batch_sizes, g.N, g.batch_sizes, g.offsets);
  }
  return g;
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Serial tensor helpers. ATen spreads copies and fills of large tensors over its OpenMP threads, whose
// workers then keep spinning beside OpenBLAS's threads while our single-threaded time loop runs: three
// busy threads on two cores (measured: an LSTM layer at T=1000, B=1, H=64 took 1.0 ms at 1 torch thread
// and 12 ms at 2, all from addmm's bias copy). So outside BLAS a layer only touches memory on the
// calling thread, and products go straight to kernels::product.
inline Tensor zeros_serial(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

// A contiguous copy of a tensor of at most 3 dimensions (a fresh buffer even when t is contiguous).
inline Tensor clone_serial(const Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.dim() <= 3);
  Tensor out = at::empty(t.sizes(), t.options());
  if (t.numel() == 0) return out;
  if (t.is_contiguous()) {
    std::memcpy(out.data_ptr(), t.data_ptr(), t.nbytes());
    return out;
  }
  const int64_t d = t.dim();
  const int64_t n0 = d >= 3 ? t.size(d - 3) : 1, n1 = d >= 2 ? t.size(d - 2) : 1, n2 = t.size(d - 1);
  const int64_t s0 = d >= 3 ? t.stride(d - 3) : 0, s1 = d >= 2 ? t.stride(d - 2) : 0, s2 = t.stride(d - 1);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "clone_serial", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    // 32 x 32 tiles of the last two dimensions, so a transposed source is read a few cache lines at a time.
    constexpr int64_t kTile = 32;
    for (int64_t i = 0; i < n0; ++i)
      for (int64_t j0 = 0; j0 < n1; j0 += kTile)
        for (int64_t k0 = 0; k0 < n2; k0 += kTile)
          for (int64_t j = j0; j < std::min(j0 + kTile, n1); ++j)
            for (int64_t k = k0; k < std::min(k0 + kTile, n2); ++k)
              dst[(i * n1 + j) * n2 + k] = src[i * s0 + j * s1 + k * s2];
  });
  return out;
}

inline Tensor contiguous_serial(const Tensor& t) { return t.is_contiguous() ? t : clone_serial(t); }

// c = op(A) op(B) (+ c when accumulate) for 2-D A, B, c with unit column stride (row slices and column
// slices of contiguous matrices): one kernels::product call.
inline void gemm_into(const Tensor& c, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
                      bool accumulate) {
  const int64_t M = c.size(0), N = c.size(1), K = trans_a ? A.size(0) : A.size(1);
  // Empty operands count as contiguous whatever their strides: nothing to multiply.
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) c.zero_();
    return;
  }
  // A size-1 dimension may carry any stride (it still counts as contiguous): its leading dimension is
  // then the row length.
  auto unit_columns = [](const Tensor& t) { return t.size(1) == 1 || t.stride(1) == 1; };
  auto ld = [](const Tensor& t) { return t.size(0) == 1 ? t.size(1) : t.stride(0); };
  TORCH_INTERNAL_ASSERT(unit_columns(A) && unit_columns(B) && unit_columns(c));
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "gemm_into", [&] {
    kernels::product<scalar_t>(trans_a, trans_b, M, N, K, A.data_ptr<scalar_t>(), ld(A), B.data_ptr<scalar_t>(),
                               ld(B), c.data_ptr<scalar_t>(), ld(c), accumulate);
  });
}

// op(A) op(B) (+ bias on every row) for 2-D A, B: one kernels::product call, bias rows filled serially.
// An untransposed A may have leading dimensions (the rows of a (T, B, I) input), taken as its rows.
// The result is written into `into` when given (a contiguous tensor of M * N elements, returned as is),
// else into a new (M, N) tensor.
inline Tensor matmul(const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, const Tensor& bias = Tensor(),
                     const Tensor& into = Tensor()) {
  TORCH_INTERNAL_ASSERT(trans_a ? A.dim() == 2 : A.dim() >= 2);
  const int64_t a_rows = c10::multiply_integers(A.sizes().begin(), A.sizes().end() - 1), a_cols = A.size(-1);
  const int64_t M = trans_a ? a_cols : a_rows, K = trans_a ? a_rows : a_cols;
  const int64_t N = trans_b ? B.size(0) : B.size(1);
  TORCH_INTERNAL_ASSERT(!into.defined() || (into.is_contiguous() && into.numel() == M * N));
  // The result first: when it cannot be allocated, that fails before a (strided, maybe stride-0) operand
  // is copied.
  Tensor c = into.defined() ? into : at::empty({M, N}, A.options());
  const Tensor a = contiguous_serial(A), b = contiguous_serial(B);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul", [&] {
    scalar_t* cp = c.data_ptr<scalar_t>();
    if (bias.defined()) {
      const scalar_t* bp = bias.data_ptr<scalar_t>();
      for (int64_t i = 0; i < M; ++i) std::memcpy(cp + i * N, bp, sizeof(scalar_t) * N);
    }
    kernels::product<scalar_t>(trans_a, trans_b, M, N, K, a.data_ptr<scalar_t>(), a_cols,
                               b.data_ptr<scalar_t>(), b.size(1), cp, N, bias.defined());
  });
  return c;
}

// dx = dgi W_ih for dgi (N, GH) and W_ih (GH, I): one product, or, when dx has dgi's shape (I == GH: an
// RNN layer whose input is as wide as its hidden state, as in every layer after the first), written over
// dgi (which the caller no longer needs) a block of rows at a time through a buffer of one block, so that
// the backward holds about 1.25 (N, GH) buffers instead of two. Blocks are a quarter of the rows, but
// where the whole product would go to BLAS (gemm.h) each block stays large enough to go there too, at any
// thread count on MKL (so the blocks do not depend on it), at 1 thread on OpenBLAS (our
// 1-thread kernel against OpenBLAS's 2 threads measured 10% slower on an RNN (100, 32, 256, 256) backward).
inline Tensor input_grad(const Tensor& dgi, const Tensor& weight_ih) {
  const int64_t N = dgi.size(0), GH = dgi.size(1), I = weight_ih.size(1);
  if (I != GH || N < 8) return matmul(dgi, false, weight_ih, false);
  int64_t rows = (N + 3) / 4;
  const int64_t own_max = kernels::own_product_max_macs();
  if (kernels::blas_takes_large_products() && N * GH * I > own_max)
    rows = std::max(rows, own_max / (GH * I) + 1);
  if (rows >= N) return matmul(dgi, false, weight_ih, false);
  const Tensor w = contiguous_serial(weight_ih);
  const Tensor block = at::empty({rows, I}, dgi.options());
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    const Tensor rows_of_dgi = dgi.narrow(0, r0, n), out = block.narrow(0, 0, n);
    gemm_into(out, rows_of_dgi, false, w, false, /*accumulate=*/false);
    std::memcpy(rows_of_dgi.data_ptr(), out.data_ptr(), out.nbytes());  // rows r0.. are read: overwrite them
  }
  return dgi;
}

// A (B, size) initial state as a fresh buffer the time loop may overwrite (zeros when absent).
inline Tensor initial_state(const optional<Tensor>& state, const Tensor& input, int64_t B, int64_t size,
                            const char* name) {
  if (!present(state)) return zeros_serial({B, size}, input.options());
  return clone_serial(*state);  // checked by check_layer_states
}

// A buffer for the time loop's packed copy of a (K, N) step operand, or undefined when no step of L uses
// one (kernels::uses_packed_weights with max_rows = kernels::packed_step_max_rows of this call).
template <typename T>
Tensor packed_buffer(const kernels::SeqLayout& L, int64_t max_rows, int64_t K, int64_t N,
                     const at::TensorOptions& opts) {
  if (!kernels::uses_packed_weights(L, max_rows)) return Tensor();
  return at::empty({kernels::packed_b_size<T>(K, N)}, opts);
}

inline Tensor rows(const Tensor& t, const LayerGeometry& g, int64_t width) {
  return contiguous_serial(t).view({g.N, width});
}

// Forward of one layer. Returns (output, h_n, c_n, workspace); c_n is undefined for cells without one,
// and workspace (what backward needs) is undefined unless `save`.
template <kernels::CellKind K>
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward(const char* op, const Tensor& input,
                                                         const optional<Tensor>& hx,
                                                         const optional<Tensor>& cx, const Tensor& weight_ih,
                                                         const Tensor& weight_hh,
                                                         const optional<Tensor>& bias_ih,
                                                         const optional<Tensor>& bias_hh,
                                                         const optional<Tensor>& weight_hr,
                                                         const optional<Tensor>& batch_sizes, bool reverse,
                                                         bool save) {
  using Cell = kernels::CellTraits<K>;
  const LayerGeometry g = check_layer(op, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes,
                                      Cell::kGates, Cell::kHasCell);
  check_layer_states<int64_t>(g, Cell::kHasCell, input, hx, cx);
  const auto opts = input.options();
  const int64_t GH = Cell::kGates * g.H;
  Tensor h = initial_state(hx, input, g.B, g.P, "hx");
  Tensor c = Cell::kHasCell ? initial_state(cx, input, g.B, g.H, "cx") : Tensor();
  Tensor out = g.packed ? at::empty({g.N, g.P}, opts) : at::empty({g.T, g.B, g.P}, opts);
  // The input projection of every timestep: one product over input's rows ((T, B, I) or packed (N, I)).
  // A one-gate cell (RNN) has it as wide as its output: it is made in the output, where the time loop adds
  // the recurrent product and applies the activation row by row (no second (N, H) buffer, whose page
  // faults on every call measured a third of an RNN (512, 8, 128, 128) forward at 2 threads).
  const Tensor gi = matmul(input, false, weight_ih, true, present(bias_ih) ? contiguous_serial(*bias_ih) : Tensor(),
                           Cell::kGates == 1 ? out : Tensor());
  const Tensor w_hh = contiguous_serial(weight_hh);
  const Tensor b_hh = present(bias_hh) ? contiguous_serial(*bias_hh) : zeros_serial({GH}, opts);
  const Tensor w_hr = present(weight_hr) ? contiguous_serial(*weight_hr) : Tensor();
  Tensor saved = save ? at::empty({g.N, Cell::kSaved * g.H}, opts) : Tensor();
  Tensor gh = Cell::kSameGateGrads ? Tensor() : at::empty({g.B, GH}, opts);  // GRU's recurrent product
  Tensor m = w_hr.defined() ? at::empty({g.B, g.H}, opts) : Tensor();
  const auto L = g.layout(reverse);
  const int64_t step_macs = g.B * GH * g.P;  // the first step's recurrent product (it has the most rows)
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
    const int64_t max_rows = kernels::packed_step_max_rows(L, step_macs);
    const Tensor w_hh_packed = packed_buffer<scalar_t>(L, max_rows, g.P, GH, opts);
    const Tensor w_hr_packed = w_hr.defined() ? packed_buffer<scalar_t>(L, max_rows, g.H, g.P, opts) : Tensor();
    kernels::forward<K, scalar_t>(
        L, {g.H, g.P, ptr<scalar_t>(gi), ptr<scalar_t>(w_hh), ptr<scalar_t>(b_hh), ptr<scalar_t>(w_hr),
            ptr<scalar_t>(h), ptr<scalar_t>(c), ptr<scalar_t>(out), ptr<scalar_t>(saved), ptr<scalar_t>(gh),
            ptr<scalar_t>(m), ptr<scalar_t>(w_hh_packed), ptr<scalar_t>(w_hr_packed), max_rows,
            kernels::split_batch_rows(L, step_macs)});
  });
  return {out, h, c, saved};
}

// Gradients of one layer, in the order (input, hx, cx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr);
// each is computed only where output_mask says so (undefined otherwise). Undefined incoming gradients
// are zeros.
template <kernels::CellKind K>
std::vector<Tensor> layer_backward(const char* op, const Tensor& grad_output, const Tensor& grad_h_n,
                                   const Tensor& grad_c_n, const Tensor& input, const optional<Tensor>& hx,
                                   const optional<Tensor>& cx, const Tensor& weight_ih,
                                   const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                   const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr,
                                   const Tensor& output, const Tensor& workspace,
                                   const optional<Tensor>& batch_sizes, bool reverse,
                                   std::array<bool, 8> output_mask) {
  using Cell = kernels::CellTraits<K>;
  const LayerGeometry g = check_layer(op, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes,
                                      Cell::kGates, Cell::kHasCell);
  const int64_t GH = Cell::kGates * g.H;
  check_layer_backward_args<int64_t>(g, Cell::kHasCell, Cell::kSaved, input, hx, cx, output, workspace, grad_output,
                            grad_h_n, grad_c_n);

  const auto opts = input.options();
  const bool proj = present(weight_hr);
  Tensor dh = grad_h_n.defined() ? clone_serial(grad_h_n) : zeros_serial({g.B, g.P}, opts);
  Tensor dc;
  if (Cell::kHasCell) dc = grad_c_n.defined() ? clone_serial(grad_c_n) : zeros_serial({g.B, g.H}, opts);
  const Tensor h0 = present(hx) ? contiguous_serial(*hx) : Tensor();
  const Tensor c0 = Cell::kHasCell && present(cx) ? contiguous_serial(*cx) : Tensor();
  const Tensor zeros = zeros_serial({g.H}, opts);  // also the absent grad_output's one row (P <= H)
  const Tensor w_hh = contiguous_serial(weight_hh);
  const Tensor w_hr = proj ? contiguous_serial(*weight_hr) : Tensor();
  const Tensor out = rows(output, g, g.P);
  const Tensor ws = contiguous_serial(workspace);
  // grad_output is read in place with its strides (an expanded .sum() grad, the transposed one of a
  // batch_first output, a direction's half of a bidirectional one): no (N, P) copy.
  const bool go_defined = grad_output.defined();
  const int64_t go_col = go_defined ? grad_output.stride(-1) : 0;
  const int64_t go_row = go_defined && g.packed ? grad_output.stride(0) : 0;
  const int64_t go_time = go_defined && !g.packed ? grad_output.stride(0) : 0;
  const int64_t go_batch = go_defined ? grad_output.stride(g.packed ? 0 : 1) : 0;
  Tensor dgi = at::empty({g.N, GH}, opts);
  // Recurrent pre-activation grads: dgi's, but for the trailing kOwnGates blocks (GRU's n), kept per row.
  const int64_t OH = Cell::kOwnGates * g.H;
  Tensor dgh_step = OH ? at::empty({g.B, GH}, opts) : Tensor();
  Tensor dgh_own = OH ? at::empty({g.N, OH}, opts) : Tensor();
  // Each row's previous h, for dW_hh = dgh^T h_prev. A padded sequence needs no copy of it: those rows
  // are the output rows of the neighbouring timestep (and h0), so dW_hh is two products over slices.
  Tensor h_prev = g.packed && output_mask[4] ? at::empty({g.N, g.P}, opts) : Tensor();
  Tensor dh_all = proj ? at::empty({g.N, g.P}, opts) : Tensor();
  Tensor m_all = proj ? at::empty({g.N, g.H}, opts) : Tensor();
  Tensor dm = proj ? at::empty({g.B, g.H}, opts) : Tensor();
  const auto L = g.layout(reverse);
  const int64_t step_macs = g.B * GH * g.P;  // the first step's recurrent product (it has the most rows)
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
    const int64_t max_rows = kernels::packed_step_max_rows(L, step_macs);
    const Tensor w_hh_packed = packed_buffer<scalar_t>(L, max_rows, GH, g.P, opts);
    const Tensor w_hr_packed = proj ? packed_buffer<scalar_t>(L, max_rows, g.P, g.H, opts) : Tensor();
    kernels::backward<K, scalar_t>(
        L, {g.H, g.P, ptr<scalar_t>(w_hh), ptr<scalar_t>(w_hr), ptr<scalar_t>(ws), ptr<scalar_t>(out),
            ptr<scalar_t>(h0), ptr<scalar_t>(c0), ptr<scalar_t>(zeros),
            go_defined ? grad_output.data_ptr<scalar_t>() : ptr<scalar_t>(zeros), go_row, go_time, go_batch,
            go_col, ptr<scalar_t>(dh), ptr<scalar_t>(dc), ptr<scalar_t>(dgi), ptr<scalar_t>(dgh_step),
            ptr<scalar_t>(dgh_own), ptr<scalar_t>(h_prev), ptr<scalar_t>(dh_all), ptr<scalar_t>(m_all),
            ptr<scalar_t>(dm), ptr<scalar_t>(w_hh_packed), ptr<scalar_t>(w_hr_packed), max_rows,
            kernels::split_batch_rows(L, step_macs)});
  });

  std::vector<Tensor> grads(8);
  if (output_mask[1]) grads[1] = dh;
  if (output_mask[2] && Cell::kHasCell) grads[2] = dc;
  if (output_mask[3]) grads[3] = matmul(dgi, true, rows(input, g, g.I), false);
  if (output_mask[4]) {
    // dW_hh = dgh^T h_prev, by blocks of gate rows: dgi's columns, then the rows' own block.
    Tensor dw = at::empty({GH, g.P}, opts);
    auto recurrent_weight_grad = [&](const Tensor& d, const Tensor& dw_rows) {
      if (g.packed) {
        gemm_into(dw_rows, d, true, h_prev, false, /*accumulate=*/false);
        return;
      }
      // Padded: the previous h of rows of time t >= 1 is the output of t - 1, of time 0 h0 (reverse:
      // mirrored), so two products over slices, with no gathered copy.
      const int64_t later = g.N - g.B;
      gemm_into(dw_rows, d.narrow(0, reverse ? 0 : g.B, later), true, out.narrow(0, reverse ? g.B : 0, later),
                false, /*accumulate=*/false);
      if (h0.defined()) gemm_into(dw_rows, d.narrow(0, reverse ? later : 0, g.B), true, h0, false, true);
    };
    recurrent_weight_grad(dgi.narrow(1, 0, GH - OH), dw.narrow(0, 0, GH - OH));
    if (OH) recurrent_weight_grad(dgh_own, dw.narrow(0, GH - OH, OH));
    grads[4] = dw;
  }
  auto column_sums = [&](const Tensor& d) {
    Tensor r = at::empty({d.size(1)}, opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
      kernels::column_sum<scalar_t>(d.data_ptr<scalar_t>(), g.N, d.size(1), r.data_ptr<scalar_t>());
    });
    return r;
  };
  if (output_mask[5] || output_mask[6]) {
    const Tensor db_ih = column_sums(dgi);
    if (output_mask[5]) grads[5] = db_ih;
    if (output_mask[6]) {
      Tensor db_hh = clone_serial(db_ih);
      if (OH) {
        const Tensor own = column_sums(dgh_own);
        std::memcpy(static_cast<char*>(db_hh.data_ptr()) + (GH - OH) * db_hh.element_size(), own.data_ptr(),
                    own.nbytes());
      }
      grads[6] = db_hh;
    }
  }
  if (output_mask[7] && proj) grads[7] = matmul(dh_all, true, m_all, false);
  // Last, as the weight gradients no longer need dgi: every timestep's input gradient dgi W_ih.
  if (output_mask[0]) {
    const Tensor dx = input_grad(dgi, weight_ih);
    grads[0] = g.packed ? dx : dx.view({g.T, g.B, g.I});
  }
  return grads;
}

// The matrix products of one layer alone, with no pointwise work: the benchmark's floor for a layer of
// this shape (padded input (T, B, I), weight_ih (G*H, I), weight_hh (G*H, H), G = 1, 3 or 4). Forward: the
// input projection and the T recurrent step products; with `backward` also the backward's T step
// products, dW_ih, dW_hh and dx. Each is the kernel call the layer makes at this thread count. `states`
// (T * B, H), the caller's (so that the floor allocates no more than a layer does), stands in for every
// step's h and, with `backward`, receives the dh products. With states of ones the forward returns
// x W_ih^T + 1 W_hh^T on every row, and the backward dx = that times W_ih (it stands in for dgi).
inline Tensor layer_products(const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
                             const Tensor& states, bool backward) {
  const char* op = "_layer_products";
  check_cpu(weight_hh, "weight_hh");
  check_dim(weight_hh, 2, "weight_hh");
  const int64_t H = weight_hh.size(1), G = H > 0 ? weight_hh.size(0) / H : 0;
  TORCH_CHECK(H > 0 && weight_hh.size(0) == G * H && (G == 1 || G == 3 || G == 4), op,
              ": weight_hh: expected (G * hidden_size, hidden_size) with G = 1, 3 or 4 gates, got ",
              weight_hh.sizes());
  const LayerGeometry g = check_layer(op, input, weight_ih, weight_hh, nullopt, nullopt, nullopt, nullopt, G, false);
  check_like<int64_t>(states, input, {g.N, H}, "states");
  TORCH_CHECK(states.is_contiguous(), op, ": states: expected a contiguous tensor");
  const int64_t GH = G * H;
  const Tensor gi = matmul(input, false, weight_ih, true);
  const Tensor w_hh = contiguous_serial(weight_hh);
  const auto L = g.layout(/*reverse=*/false);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "_layer_products", [&] {
    kernels::step_products<scalar_t>(L, GH, H, ptr<scalar_t>(states), ptr<scalar_t>(w_hh), true, ptr<scalar_t>(gi));
    if (backward)
      kernels::step_products<scalar_t>(L, H, GH, ptr<scalar_t>(gi), ptr<scalar_t>(w_hh), false, ptr<scalar_t>(states));
  });
  if (!backward) return gi;
  matmul(gi, true, rows(input, g, g.I), false);  // dW_ih
  matmul(gi, true, states, false);               // dW_hh
  return input_grad(gi, weight_ih);              // dx, last (it may overwrite dgi)
}

}  // namespace cpu
}  // namespace torch_rnn_ext
