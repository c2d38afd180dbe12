#pragma once
// The shape logic of the recurrent layer ops, shared by their CPU kernels (int64_t sizes) and their Meta
// kernels (c10::SymInt sizes): argument checks and the sizes of every output.
#include <ATen/ATen.h>

#include <string>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "kernels/cell_traits.h"

namespace torch_rnn_ext {

// Sizes of one layer's sequence. For packed input B is batch_sizes[0], a value, which this shape logic
// does not read (read_batch_sizes does, on CPU).
template <typename S>
struct LayerShape {
  S T = 0, B = 0, N = 0, I = 0, H = 0, P = 0;  // P: size of h (H, or proj_size with weight_hr)
  bool packed = false;
};

// Validates input, weights, biases, the projection and the form of batch_sizes of a layer whose W_hh has
// `gates` * H rows, on `device` (batch_sizes may be a CPU tensor whatever the device, as torch.nn's
// PackedSequence keeps it). `op` names the op in messages.
template <typename S>
LayerShape<S> check_layer_shape(const char* op, const c10::Device& device, const at::Tensor& input,
                                const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                const optional<at::Tensor>& bias_ih, const optional<at::Tensor>& bias_hh,
                                const optional<at::Tensor>& weight_hr, const optional<at::Tensor>& batch_sizes,
                                int64_t gates, bool can_project) {
  LayerShape<S> g;
  TORCH_CHECK(can_project || !present(weight_hr), op, ": weight_hr: only LSTM layers have a projection");
  g.packed = present(batch_sizes);
  check_device(input, device, "input");
  check_floating(input, "input");
  if (g.packed) {
    TORCH_CHECK(input.dim() == 2, op, ": input: with batch_sizes (a packed sequence) expected a 2-D tensor "
                "(sum of batch_sizes, input_size), got a ", input.dim(), "-D tensor of size ", input.sym_sizes());
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": input: expected a 3-D tensor (seq_len, batch, input_size), got a ",
                input.dim(), "-D tensor of size ", input.sym_sizes());
  }
  check_device(weight_hh, device, "weight_hh");
  check_dtype(weight_hh, input.scalar_type(), "weight_hh");
  check_dim(weight_hh, 2, "weight_hh");
  g.P = size_of<S>(weight_hh, 1);
  const S rows_hh = size_of<S>(weight_hh, 0);
  if (present(weight_hr)) {
    TORCH_CHECK(rows_hh % gates == 0, op, ": weight_hh: expected ", gates, " * hidden_size rows, got size ",
                weight_hh.sym_sizes());
    g.H = rows_hh / gates;
    check_like<S>(*weight_hr, input, {g.P, g.H}, "weight_hr");
    TORCH_CHECK(g.P < g.H, op, ": weight_hr: proj_size (", g.P, ") must be smaller than hidden_size (", g.H, ")");
  } else {
    g.H = g.P;
    const S GH = checked_product<S>(op, "weight_hh: gates x hidden_size", {S(gates), g.H});
    TORCH_CHECK(rows_hh == GH, op, ": weight_hh: expected size (", gates, " * hidden_size, hidden_size) = (", GH,
                ", ", g.H, "), got ", weight_hh.sym_sizes());
  }
  check_device(weight_ih, device, "weight_ih");
  check_dtype(weight_ih, input.scalar_type(), "weight_ih");
  check_dim(weight_ih, 2, "weight_ih");
  const S GH = g.H * gates;
  TORCH_CHECK(size_of<S>(weight_ih, 0) == GH, op, ": weight_ih: expected ", GH, " rows (", gates,
              " * hidden_size), got size ", weight_ih.sym_sizes());
  g.I = size_of<S>(weight_ih, 1);
  TORCH_CHECK(size_of<S>(input, -1) == g.I, op, ": input: expected input_size ", g.I,
              " (the columns of weight_ih), got input of size ", input.sym_sizes());
  check_optional_like<S>(bias_ih, input, {GH}, "bias_ih");
  check_optional_like<S>(bias_hh, input, {GH}, "bias_hh");

  if (g.packed) {
    const at::Tensor& bsz = *batch_sizes;
    if (!bsz.device().is_cpu()) check_device(bsz, device, "batch_sizes");
    TORCH_CHECK(bsz.scalar_type() == at::kLong, "batch_sizes: expected dtype int64, got ", bsz.scalar_type());
    check_dim(bsz, 1, "batch_sizes");
    g.T = size_of<S>(bsz, 0);
    TORCH_CHECK(g.T >= 1, op, ": batch_sizes: expected at least one timestep, got an empty tensor");
    g.N = size_of<S>(input, 0);
  } else {
    g.T = size_of<S>(input, 0);
    g.B = size_of<S>(input, 1);
    TORCH_CHECK(g.T >= 1, op, ": input: expected a sequence of at least one timestep, got input of size ",
                input.sym_sizes());
    g.N = g.T * g.B;
  }
  // The largest buffers a layer allocates, its gate pre-activations and workspace, have at most
  // 2 * gates * hidden_size values per row.
  checked_product<S>(op, "input and weight_hh: rows x 2 * gates x hidden_size (the layer's workspace)",
                     {g.N, S(2 * gates), g.H});
  return g;
}

// Reads and validates the values of a CPU batch_sizes (positive, non-increasing, summing to the `rows` of
// packed input) into sizes and row offsets per timestep; returns the batch size, batch_sizes[0].
inline int64_t read_batch_sizes(const char* op, const at::Tensor& bsz, int64_t rows, std::vector<int64_t>& sizes,
                                std::vector<int64_t>& offsets) {
  const int64_t T = bsz.size(0);
  TORCH_CHECK(T <= rows, op, ": batch_sizes: ", T, " timesteps of at least one row each, but input has ", rows,
              " rows");
  const at::Tensor b = bsz.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  sizes.assign(p, p + T);
  offsets.resize(T);
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(sizes[t] >= 1 && (t == 0 || sizes[t] <= sizes[t - 1]), op,
                ": batch_sizes: expected positive, non-increasing values, got ", bsz);
    // Each partial sum against the rows left, so huge values cannot wrap around to the row count.
    TORCH_CHECK(sizes[t] <= rows - total, op, ": batch_sizes sum to more than the ", rows,
                " rows of input (the first ", t + 1, " values already do)");
    offsets[t] = total;
    total += sizes[t];
  }
  TORCH_CHECK(total == rows, op, ": batch_sizes sum to ", total, " but input has ", rows, " rows");
  return sizes[0];
}

// The sizes of a layer's output: (T, B, P), or (N, P) packed.
template <typename S>
std::vector<S> layer_output_sizes(const LayerShape<S>& g) {
  return g.packed ? std::vector<S>{g.N, g.P} : std::vector<S>{g.T, g.B, g.P};
}

// The initial states a layer forward takes: hx (B, P) and, for a cell with one, cx (B, H).
template <typename S>
void check_layer_states(const LayerShape<S>& g, bool has_cell, const at::Tensor& input,
                        const optional<at::Tensor>& hx, const optional<at::Tensor>& cx) {
  check_optional_like<S>(hx, input, {g.B, g.P}, "hx");
  if (has_cell) check_optional_like<S>(cx, input, {g.B, g.H}, "cx");
}

// What a layer backward takes besides the forward's arguments: the forward's output and workspace
// ((N, saved * H)), and the incoming gradients (each may be absent).
template <typename S>
void check_layer_backward_args(const LayerShape<S>& g, bool has_cell, int64_t saved, const at::Tensor& input,
                               const optional<at::Tensor>& hx, const optional<at::Tensor>& cx,
                               const at::Tensor& output, const at::Tensor& workspace,
                               const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                               const at::Tensor& grad_c_n) {
  check_layer_states<S>(g, has_cell, input, hx, cx);
  const std::vector<S> out_sizes = layer_output_sizes(g);
  check_like<S>(output, input, out_sizes, "output");
  check_like<S>(workspace, input, {g.N, g.H * saved}, "workspace");
  if (grad_output.defined()) check_like<S>(grad_output, input, out_sizes, "grad_output");
  if (grad_h_n.defined()) check_like<S>(grad_h_n, input, {g.B, g.P}, "grad_h_n");
  if (has_cell && grad_c_n.defined()) check_like<S>(grad_c_n, input, {g.B, g.H}, "grad_c_n");
}

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

}  // namespace torch_rnn_ext
