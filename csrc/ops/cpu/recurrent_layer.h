#pragma once
// The ATen side of one recurrent layer on CPU, shared by every cell type: validates the arguments,
// lays out the sequence, does the products that span all timesteps (input projection, input and weight
// gradients) with ATen, and hands raw pointers to the time loop in kernels/recurrence.h.
#include <ATen/ATen.h>

#include <array>
#include <string>
#include <type_traits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "kernels/cell_traits.h"
#include "kernels/recurrence.h"

namespace torch_rnn_ext {
namespace cpu {

using at::Tensor;
using c10::optional;

// Sizes of one layer's sequence, and its time layout (see kernels/recurrence.h).
struct LayerGeometry {
  int64_t T = 0, B = 0, N = 0, I = 0, H = 0, P = 0;  // P: size of h (H, or proj_size with weight_hr)
  bool packed = false;
  std::vector<int64_t> batch_sizes, offsets;
  kernels::SeqLayout layout(bool reverse) const {
    return {batch_sizes.data(), offsets.data(), T, reverse};
  }
};

// Validates input, weights, biases, the projection and batch_sizes of a layer whose W_hh has `gates` * H
// rows, and returns its geometry. `op` names the op in messages.
inline LayerGeometry check_layer(const char* op, const Tensor& input, const Tensor& weight_ih,
                                 const Tensor& weight_hh, const optional<Tensor>& bias_ih,
                                 const optional<Tensor>& bias_hh, const optional<Tensor>& weight_hr,
                                 const optional<Tensor>& batch_sizes, int64_t gates) {
  LayerGeometry g;
  g.packed = present(batch_sizes);
  check_cpu(input, "input");
  check_floating(input, "input");
  if (g.packed) {
    TORCH_CHECK(input.dim() == 2, op, ": input: with batch_sizes (a packed sequence) expected a 2-D tensor "
                "(sum of batch_sizes, input_size), got a ", input.dim(), "-D tensor of size ", input.sizes());
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": input: expected a 3-D tensor (seq_len, batch, input_size), got a ",
                input.dim(), "-D tensor of size ", input.sizes());
  }
  check_cpu(weight_hh, "weight_hh");
  check_dtype(weight_hh, input.scalar_type(), "weight_hh");
  check_dim(weight_hh, 2, "weight_hh");
  g.P = weight_hh.size(1);
  if (present(weight_hr)) {
    TORCH_CHECK(weight_hh.size(0) % gates == 0, op, ": weight_hh: expected ", gates,
                " * hidden_size rows, got size ", weight_hh.sizes());
    g.H = weight_hh.size(0) / gates;
    check_cpu(*weight_hr, "weight_hr");
    check_dtype(*weight_hr, input.scalar_type(), "weight_hr");
    check_sizes(*weight_hr, {g.P, g.H}, "weight_hr");
    TORCH_CHECK(g.P < g.H, op, ": weight_hr: proj_size (", g.P, ") must be smaller than hidden_size (", g.H, ")");
  } else {
    g.H = g.P;
    TORCH_CHECK(weight_hh.size(0) == gates * g.H, op, ": weight_hh: expected size (", gates,
                " * hidden_size, hidden_size) = (", gates * g.H, ", ", g.H, "), got ", weight_hh.sizes());
  }
  check_cpu(weight_ih, "weight_ih");
  check_dtype(weight_ih, input.scalar_type(), "weight_ih");
  check_dim(weight_ih, 2, "weight_ih");
  TORCH_CHECK(weight_ih.size(0) == gates * g.H, op, ": weight_ih: expected ", gates * g.H, " rows (", gates,
              " * hidden_size), got size ", weight_ih.sizes());
  g.I = weight_ih.size(1);
  TORCH_CHECK(input.size(-1) == g.I, op, ": input: expected input_size ", g.I,
              " (the columns of weight_ih), got input of size ", input.sizes());
  check_optional_like(bias_ih, input, {gates * g.H}, "bias_ih");
  check_optional_like(bias_hh, input, {gates * g.H}, "bias_hh");

  if (g.packed) {
    const Tensor& bsz = *batch_sizes;
    check_cpu(bsz, "batch_sizes");
    TORCH_CHECK(bsz.scalar_type() == at::kLong, "batch_sizes: expected dtype int64, got ", bsz.scalar_type());
    check_dim(bsz, 1, "batch_sizes");
    g.T = bsz.size(0);
    TORCH_CHECK(g.T >= 1, op, ": batch_sizes: expected at least one timestep, got an empty tensor");
    const Tensor b = bsz.contiguous();
    const int64_t* p = b.data_ptr<int64_t>();
    g.batch_sizes.assign(p, p + g.T);
    g.offsets.resize(g.T);
    int64_t total = 0;
    for (int64_t t = 0; t < g.T; ++t) {
      TORCH_CHECK(g.batch_sizes[t] >= 1 && (t == 0 || g.batch_sizes[t] <= g.batch_sizes[t - 1]),
                  op, ": batch_sizes: expected positive, non-increasing values, got ", bsz);
      g.offsets[t] = total;
      total += g.batch_sizes[t];
    }
    TORCH_CHECK(total == input.size(0), op, ": batch_sizes sum to ", total, " but input has ", input.size(0),
                " rows");
    g.B = g.batch_sizes[0];
    g.N = total;
  } else {
    g.T = input.size(0);
    g.B = input.size(1);
    TORCH_CHECK(g.T >= 1, op, ": input: expected a sequence of at least one timestep, got input of size ",
                input.sizes());
    g.N = g.T * g.B;
    g.batch_sizes.assign(g.T, g.B);
    g.offsets.resize(g.T);
    for (int64_t t = 0; t < g.T; ++t) g.offsets[t] = t * g.B;
  }
  return g;
}

// A (B, size) initial state as a fresh buffer the time loop may overwrite (zeros when absent).
inline Tensor initial_state(const optional<Tensor>& state, const Tensor& input, int64_t B, int64_t size,
                            const char* name) {
  if (!present(state)) return at::zeros({B, size}, input.options());
  check_like(*state, input, {B, size}, name);
  return state->contiguous().clone();
}

inline Tensor rows(const Tensor& t, const LayerGeometry& g, int64_t width) {
  return t.contiguous().view({g.N, width});
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
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
  TORCH_CHECK(Cell::kHasCell || !present(weight_hr), op, ": weight_hr: only LSTM layers have a projection");
  const LayerGeometry g = check_layer(op, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes,
                                      Cell::kGates);
  const auto opts = input.options();
  const int64_t GH = Cell::kGates * g.H;
  Tensor h = initial_state(hx, input, g.B, g.P, "hx");
  Tensor c = Cell::kHasCell ? initial_state(cx, input, g.B, g.H, "cx") : Tensor();
  const Tensor x = rows(input, g, g.I);
  // The input projection of every timestep: one product.
  const Tensor gi = present(bias_ih) ? at::addmm(*bias_ih, x, weight_ih.t()) : at::mm(x, weight_ih.t());
  // The time loop multiplies by W_hh^T and W_hr^T as row-major (K, N) operands.
  const Tensor w_hh_t = weight_hh.t().contiguous();
  const Tensor b_hh = present(bias_hh) ? bias_hh->contiguous() : at::zeros({GH}, opts);
  const Tensor w_hr_t = present(weight_hr) ? weight_hr->t().contiguous() : Tensor();
  Tensor out = at::empty({g.N, g.P}, opts);
  Tensor saved = save ? at::empty({g.N, Cell::kSaved * g.H}, opts) : Tensor();
  Tensor gh = at::empty({g.B, GH}, opts);
  Tensor m = w_hr_t.defined() ? at::empty({g.B, g.H}, opts) : Tensor();
  const auto L = g.layout(reverse);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
    kernels::forward<K, scalar_t>(
        L, {g.H, g.P, ptr<scalar_t>(gi), ptr<scalar_t>(w_hh_t), ptr<scalar_t>(b_hh), ptr<scalar_t>(w_hr_t),
            ptr<scalar_t>(h), ptr<scalar_t>(c), ptr<scalar_t>(out), ptr<scalar_t>(saved), ptr<scalar_t>(gh),
            ptr<scalar_t>(m)});
  });
  Tensor output = g.packed ? out : out.view({g.T, g.B, g.P});
  return {output, h, c, saved};
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
  TORCH_CHECK(Cell::kHasCell || !present(weight_hr), op, ": weight_hr: only LSTM layers have a projection");
  const LayerGeometry g = check_layer(op, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes,
                                      Cell::kGates);
  const int64_t GH = Cell::kGates * g.H;
  check_optional_like(hx, input, {g.B, g.P}, "hx");
  if (Cell::kHasCell) check_optional_like(cx, input, {g.B, g.H}, "cx");
  const std::vector<int64_t> out_sizes =
      g.packed ? std::vector<int64_t>{g.N, g.P} : std::vector<int64_t>{g.T, g.B, g.P};
  check_like(output, input, out_sizes, "output");
  check_like(workspace, input, {g.N, Cell::kSaved * g.H}, "workspace");
  if (grad_output.defined()) check_like(grad_output, input, out_sizes, "grad_output");
  if (grad_h_n.defined()) check_like(grad_h_n, input, {g.B, g.P}, "grad_h_n");
  if (Cell::kHasCell && grad_c_n.defined()) check_like(grad_c_n, input, {g.B, g.H}, "grad_c_n");

  const auto opts = input.options();
  const bool proj = present(weight_hr);
  const Tensor go = grad_output.defined() ? rows(grad_output, g, g.P) : at::zeros({g.N, g.P}, opts);
  Tensor dh = grad_h_n.defined() ? grad_h_n.contiguous().clone() : at::zeros({g.B, g.P}, opts);
  Tensor dc;
  if (Cell::kHasCell) dc = grad_c_n.defined() ? grad_c_n.contiguous().clone() : at::zeros({g.B, g.H}, opts);
  const Tensor h0 = present(hx) ? hx->contiguous() : Tensor();
  const Tensor c0 = Cell::kHasCell && present(cx) ? cx->contiguous() : Tensor();
  const Tensor zeros = at::zeros({g.H}, opts);
  const Tensor w_hh = weight_hh.contiguous();
  const Tensor w_hr = proj ? weight_hr->contiguous() : Tensor();
  const Tensor out = rows(output, g, g.P);
  const Tensor ws = workspace.contiguous();
  Tensor dgi = at::empty({g.N, GH}, opts);
  Tensor dgh = Cell::kSameGateGrads ? dgi : at::empty({g.N, GH}, opts);
  Tensor h_prev = at::empty({g.N, g.P}, opts);
  Tensor dh_all = proj ? at::empty({g.N, g.P}, opts) : Tensor();
  Tensor m_all = proj ? at::empty({g.N, g.H}, opts) : Tensor();
  Tensor dm = proj ? at::empty({g.B, g.H}, opts) : Tensor();
  const auto L = g.layout(reverse);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
    kernels::backward<K, scalar_t>(
        L, {g.H, g.P, ptr<scalar_t>(w_hh), ptr<scalar_t>(w_hr), ptr<scalar_t>(ws), ptr<scalar_t>(out),
            ptr<scalar_t>(h0), ptr<scalar_t>(c0), ptr<scalar_t>(zeros), ptr<scalar_t>(go), ptr<scalar_t>(dh),
            ptr<scalar_t>(dc), ptr<scalar_t>(dgi), ptr<scalar_t>(dgh), ptr<scalar_t>(h_prev),
            ptr<scalar_t>(dh_all), ptr<scalar_t>(m_all), ptr<scalar_t>(dm)});
  });

  std::vector<Tensor> grads(8);
  if (output_mask[0]) {
    const Tensor dx = at::mm(dgi, weight_ih);  // every timestep's input gradient: one product
    grads[0] = g.packed ? dx : dx.view({g.T, g.B, g.I});
  }
  if (output_mask[1]) grads[1] = dh;
  if (output_mask[2] && Cell::kHasCell) grads[2] = dc;
  if (output_mask[3]) grads[3] = at::mm(dgi.t(), rows(input, g, g.I));
  if (output_mask[4]) grads[4] = at::mm(dgh.t(), h_prev);
  auto bias_grad = [&](const Tensor& d) {
    Tensor r = at::empty({GH}, opts);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "recurrent_layer", [&] {
      kernels::column_sum<scalar_t>(d.data_ptr<scalar_t>(), g.N, GH, r.data_ptr<scalar_t>());
    });
    return r;
  };
  if (output_mask[5]) grads[5] = bias_grad(dgi);
  if (output_mask[6]) grads[6] = bias_grad(dgh);
  if (output_mask[7] && proj) grads[7] = at::mm(dh_all.t(), m_all);
  return grads;
}

}  // namespace cpu
}  // namespace torch_rnn_ext

namespace torch_rnn_ext {
namespace cpu {

// Calls f(std::integral_constant<CellKind, K>) for the cell named by `mode`.
template <typename F>
auto with_cell(const std::string& mode, F&& f) {
  using kernels::CellKind;
  if (mode == "lstm") return f(std::integral_constant<CellKind, CellKind::LSTM>{});
  if (mode == "gru") return f(std::integral_constant<CellKind, CellKind::GRU>{});
  if (mode == "rnn_tanh") return f(std::integral_constant<CellKind, CellKind::RNN_TANH>{});
  if (mode == "rnn_relu") return f(std::integral_constant<CellKind, CellKind::RNN_RELU>{});
  TORCH_CHECK(false, "mode: expected one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu', got '", mode, "'");
}

}  // namespace cpu
}  // namespace torch_rnn_ext
