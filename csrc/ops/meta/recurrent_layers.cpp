// Meta kernels of the recurrent layer ops: the CPU kernels' checks (ops/layer_shapes.h) and output sizes,
// strides (all contiguous) and dtypes, on SymInts, so they also serve torch.compile's fake tensors with
// dynamic shapes, torch.export and AOTInductor. No data is read, except a CPU batch_sizes.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "ops/layer_kernels.h"
#include "ops/layer_shapes.h"

namespace torch_rnn_ext {
namespace meta {
namespace {

using at::Tensor;
using S = c10::SymInt;
using kernels::CellKind;
using kernels::CellTraits;

// The layer's shape on meta, with B: batch_sizes[0] of a packed sequence is a value, read when
// batch_sizes is a CPU tensor (as torch.nn keeps it), else taken from hx.
LayerShape<S> layer_shape(const char* op, const Tensor& input, const optional<Tensor>& hx, const Tensor& weight_ih,
                          const Tensor& weight_hh, const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
                          const optional<Tensor>& weight_hr, const optional<Tensor>& batch_sizes, int64_t gates,
                          bool can_project) {
  LayerShape<S> g = check_layer_shape<S>(op, at::kMeta, input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                         batch_sizes, gates, can_project);
  if (!g.packed) return g;
  if (batch_sizes->device().is_cpu()) {
    std::vector<int64_t> sizes, offsets;
    g.B = read_batch_sizes(op, *batch_sizes, g.N.guard_int(__FILE__, __LINE__), sizes, offsets);
  } else {
    TORCH_CHECK(present(hx), op, ": batch_sizes: the batch size of a packed sequence is the value batch_sizes[0]; "
                "on the meta device (and under torch.compile or torch.export) give batch_sizes as a CPU tensor "
                "or pass hx, whose first size is the batch size");
    g.B = hx->sym_size(0);
  }
  return g;
}

template <CellKind K>
struct MetaLayer {
  using Cell = CellTraits<K>;

  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward(const char* op, const Tensor& input,
                                                            const optional<Tensor>& hx, const optional<Tensor>& cx,
                                                            const Tensor& weight_ih, const Tensor& weight_hh,
                                                            const optional<Tensor>& bias_ih,
                                                            const optional<Tensor>& bias_hh,
                                                            const optional<Tensor>& weight_hr,
                                                            const optional<Tensor>& batch_sizes, bool reverse,
                                                            bool save) {
    const LayerShape<S> g = layer_shape(op, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                        batch_sizes, Cell::kGates, Cell::kHasCell);
    check_layer_states<S>(g, Cell::kHasCell, input, hx, cx);
    const auto opts = input.options();
    return {empty_of(layer_output_sizes(g), opts), empty_of({g.B, g.P}, opts),
            Cell::kHasCell ? empty_of({g.B, g.H}, opts) : Tensor(),
            save ? empty_of({g.N, g.H * Cell::kSaved}, opts) : Tensor()};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
      const char* op, const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx, const Tensor& weight_ih,
      const Tensor& weight_hh, const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh,
      const optional<Tensor>& weight_hr, const Tensor& output, const Tensor& workspace,
      const optional<Tensor>& batch_sizes, bool reverse, std::array<bool, 8> mask) {
    // A packed sequence's batch size is also the first size of the incoming gradient of h_n.
    const optional<Tensor> batch_like =
        present(hx) ? hx : grad_h_n.defined() ? optional<Tensor>(grad_h_n) : optional<Tensor>();
    const LayerShape<S> g = layer_shape(op, input, batch_like, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                        batch_sizes, Cell::kGates, Cell::kHasCell);
    check_layer_backward_args<S>(g, Cell::kHasCell, Cell::kSaved, input, hx, cx, output, workspace, grad_output,
                                 grad_h_n, grad_c_n);
    const auto opts = input.options();
    const S GH = g.H * Cell::kGates;
    return {empty_if(mask[0], input.sym_sizes(), opts), empty_if(mask[1], {g.B, g.P}, opts),
            empty_if(mask[2] && Cell::kHasCell, {g.B, g.H}, opts), empty_if(mask[3], {GH, g.I}, opts),
            empty_if(mask[4], {GH, g.P}, opts), empty_if(mask[5], {GH}, opts), empty_if(mask[6], {GH}, opts),
            empty_if(mask[7] && present(weight_hr), {g.P, g.H}, opts)};
  }
};

// The CPU kernel's checks (cpu/recurrent_layer.h layer_products) and result: (N, G*H), or with
// `backward` dx (N, I).
Tensor layer_products_meta(const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
                           const Tensor& states, bool backward) {
  const char* op = "_layer_products";
  check_device(weight_hh, at::kMeta, "weight_hh");
  check_dim(weight_hh, 2, "weight_hh");
  const S H = weight_hh.sym_size(1), rows = weight_hh.sym_size(0);
  const int64_t G = H > 0 && rows % H == 0 ? (rows / H).guard_int(__FILE__, __LINE__) : 0;
  TORCH_CHECK(G == 1 || G == 3 || G == 4, op,
              ": weight_hh: expected (G * hidden_size, hidden_size) with G = 1, 3 or 4 gates, got ",
              weight_hh.sym_sizes());
  const LayerShape<S> g = check_layer_shape<S>(op, at::kMeta, input, weight_ih, weight_hh, nullopt, nullopt,
                                               nullopt, nullopt, G, false);
  check_like<S>(states, input, {g.N, H}, "states");
  TORCH_CHECK(states.is_contiguous(), op, ": states: expected a contiguous tensor");
  return empty_of({g.N, backward ? g.I : H * G}, input.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_rnn_ext, Meta, m) {
  LayerKernels<MetaLayer>::register_all(m);
  m.impl("_layer_products", TORCH_FN(layer_products_meta));
}

TRE_BELOW_AUTOGRAD_ON_META("_recurrent_layer_forward", "_layer_products")

}  // namespace meta
}  // namespace torch_rnn_ext
