// Multi-layer, bidirectional recurrent stacks and single-step cells, one op call per module forward.
// They are composites of the layer ops (registered CompositeImplicitAutograd): the layers' C++ autograd
// Function gives the gradient, and inter-layer dropout goes through at::dropout in the same order as
// ATen's own RNN, so a seed gives torch.nn's masks.
#include "ops/rnn_stack.h"

#include <torch/library.h>

#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "checks.h"
#include "ops/autograd/common.h"  // needs_graph, value
#include "ops/recurrent_layers.h"

namespace torch_rnn_ext {
namespace {

using at::Tensor;
using autograd::needs_graph;
using autograd::value;

optional<Tensor> maybe(bool cond, const Tensor& t) { return cond ? optional<Tensor>(t) : nullopt; }

// One layer in one direction: (x, h0, c0, params of this layer/direction, reverse) -> (out, h_n, c_n).
struct LayerParams {
  Tensor w_ih, w_hh;
  optional<Tensor> b_ih, b_hh, w_hr;
};
using LayerFn = std::function<std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const LayerParams&, const optional<Tensor>&,
    bool)>;

// Checks a stacked initial state the way torch.nn words it ("Expected hidden[0] size (2, 3, 6), got [1, 3, 6]").
void check_hidden(const Tensor& h, c10::SymIntArrayRef expected, const char* name) {
  const c10::SymIntArrayRef got = h.sym_sizes();
  bool same = got.size() == expected.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == expected[i];
  if (same) return;
  std::ostringstream tuple;
  for (size_t i = 0; i < expected.size(); ++i) tuple << (i ? ", " : "") << expected[i];
  TORCH_CHECK(false, "Expected ", name, " size (", tuple.str(), "), got ", got);
}

// The initial states' ranks against the input's, in torch.nn's words: 2-D for unbatched (2-D) input,
// 3-D for batched.
void check_hidden_ranks(const Tensor& h0, const Tensor& c0, bool has_cell, bool unbatched) {
  if (!h0.defined()) return;
  const int64_t want = unbatched ? 2 : 3;
  const char* input = unbatched ? "unbatched 2-D" : "batched 3-D";
  if (has_cell) {
    TORCH_CHECK(h0.dim() == want && c0.dim() == want, "For ", input, " input, hx and cx should also be ", want,
                "-D but got (", h0.dim(), "-D, ", c0.dim(), "-D) tensors");
  } else {
    TORCH_CHECK(h0.dim() == want, "For ", input, " input, hx should also be ", want, "-D but got ", h0.dim(),
                "-D tensor");
  }
}

// Without a graph to record (autograd::needs_graph false: inference, streaming) the stacks and cells run
// below autograd: the layer ops go straight to their CPU kernels and the views made on the way (states
// per layer, one-step inputs, outputs) carry no autograd metadata. Only tensors made here escape and none
// aliases an argument, so nothing needs that tracking.
using BelowAutograd = optional<at::AutoDispatchBelowADInplaceOrView>;

std::tuple<Tensor, Tensor, Tensor> run_stack(const char* op, const Tensor& input, const Tensor& h0_arg,
                                             const Tensor& c0_arg, at::TensorList params, bool has_biases,
                                             bool can_project, int64_t num_layers, double dropout, bool train,
                                             bool bidirectional, bool batch_first,
                                             const optional<Tensor>& batch_sizes, const LayerFn& layer) {
  check_defined(input, "input");
  TORCH_CHECK(num_layers >= 1, op, ": num_layers: expected at least 1, got ", num_layers);
  TORCH_CHECK(dropout >= 0 && dropout <= 1, op, ": dropout: expected a probability in [0, 1], got ", dropout);
  const int64_t D = bidirectional ? 2 : 1, base = has_biases ? 4 : 2;
  const int64_t n = static_cast<int64_t>(params.size());
  // Every layer and direction has at least two tensors: num_layers is bounded by the tensors given before
  // the counts below multiply it.
  TORCH_CHECK(num_layers <= n, op, ": params: expected ", base, can_project ? " (or, with projections, " +
              std::to_string(base + 1) + ")" : "", " tensors per layer and direction for num_layers=", num_layers,
              ", directions=", D, ", has_biases=", has_biases, ", got ", n);
  const bool proj = can_project && n == num_layers * D * (base + 1);
  const int64_t per = base + (proj ? 1 : 0);
  TORCH_CHECK(n == num_layers * D * per, op, ": params: expected ", num_layers * D * base,
              can_project ? " (or, with projections, " + std::to_string(num_layers * D * (base + 1)) + ")" : "",
              " tensors for num_layers=", num_layers, ", directions=", D, ", has_biases=", has_biases, ", got ", n);
  for (const Tensor& p : params) check_device(p, input.device(), "params");
  BelowAutograd below;
  if (!needs_graph({input, h0_arg, c0_arg}, params)) below.emplace();
  const bool packed = present(batch_sizes);
  bool unbatched = false;
  if (packed) {
    TORCH_CHECK(input.dim() == 2, op, ": input: with batch_sizes expected a 2-D tensor of packed rows, got a ",
                input.dim(), "-D tensor of size ", input.sizes());
  } else {
    TORCH_CHECK(input.dim() == 3 || input.dim() == 2, op,
                ": input: expected a 3-D tensor (seq_len, batch, input_size) or, unbatched, a 2-D tensor "
                "(seq_len, input_size), got a ", input.dim(), "-D tensor of size ", input.sizes());
    unbatched = input.dim() == 2;
  }
  check_hidden_ranks(h0_arg, c0_arg, c0_arg.defined(), unbatched);
  // Unbatched input is a batch of one: (T, I) -> (T, 1, I), states (L*D, P) -> (L*D, 1, P).
  const Tensor h0 = unbatched && h0_arg.defined() ? h0_arg.unsqueeze(1) : h0_arg;
  const Tensor c0 = unbatched && c0_arg.defined() ? c0_arg.unsqueeze(1) : c0_arg;
  Tensor x = unbatched ? input.unsqueeze(1) : (batch_first && !packed) ? input.transpose(0, 1) : input;
  c10::SymInt B = packed ? c10::SymInt(0) : x.sym_size(1);
  if (packed) {
    TORCH_CHECK(batch_sizes->dim() == 1 && batch_sizes->sym_numel() >= 1 && batch_sizes->scalar_type() == at::kLong,
                op, ": batch_sizes: expected a non-empty 1-D int64 tensor, got ", batch_sizes->sym_sizes(), " ",
                batch_sizes->scalar_type());
    // The batch size is the value batch_sizes[0]; given h_0, its size 1 (which is then checked against
    // it by the layers), so that a packed stack with h_0 needs no data under torch.compile.
    if (h0.defined() && h0.dim() == 3) {
      B = h0.sym_size(1);
    } else {
      check_cpu(*batch_sizes, "batch_sizes");
      B = batch_sizes->select(0, 0).item<int64_t>();
    }
  }
  TORCH_CHECK(params[1].dim() == 2, op, ": params[1] (weight_hh_l0): expected a 2-D tensor, got size ",
              params[1].sym_sizes());
  // With projections, the hidden size is weight_hh's rows over the 4 gates (the layers check weight_hr
  // against it), so that a wrong weight_hr is reported as such rather than as a wrong c_0.
  const c10::SymInt P = params[1].sym_size(1), H = proj ? params[1].sym_size(0) / 4 : P;
  // An LSTM stack's tensor count decides whether it projects: one missing weight_hr reads as no projection,
  // and its weight_hh of (4 H, P) then disagrees with itself before any state is checked against it.
  TORCH_CHECK(!can_project || proj || params[1].sym_size(0) == P * 4, op,
              ": params[1] (weight_hh_l0): expected size (4 * hidden_size, hidden_size) with ", base,
              " tensors per layer and direction (no projection), got ", params[1].sym_sizes(), "; with proj_size, "
              "each layer and direction has ", base + 1, " tensors, weight_hr last");
  const int64_t LD = num_layers * D;
  if (h0.defined()) check_hidden(h0, {LD, B, P}, c0.defined() || can_project ? "hidden[0]" : "hidden");
  if (c0.defined()) check_hidden(c0, {LD, B, H}, "hidden[1]");

  std::vector<Tensor> h_n, c_n;
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<Tensor> outs;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t idx = l * D + d;
      const Tensor* p = params.data() + idx * per;
      const LayerParams lp{p[0], p[1], maybe(has_biases, has_biases ? p[2] : Tensor()),
                           maybe(has_biases, has_biases ? p[3] : Tensor()), maybe(proj, proj ? p[per - 1] : Tensor())};
      auto [out, h, c] = layer(x, maybe(h0.defined(), h0.defined() ? h0[idx] : Tensor()),
                               maybe(c0.defined(), c0.defined() ? c0[idx] : Tensor()), lp, batch_sizes, d == 1);
      outs.push_back(out);
      h_n.push_back(h);
      if (c.defined()) c_n.push_back(c);
    }
    x = D == 2 ? at::cat(outs, -1) : outs[0];
    if (dropout != 0 && train && l < num_layers - 1) x = at::dropout(x, dropout, /*train=*/true);
  }
  if (unbatched) {
    // (1, P) per layer and direction is already a row of (L*D, P): one layer and direction needs no copy.
    auto stacked = [](const std::vector<Tensor>& v) { return v.size() == 1 ? v[0] : at::stack(v).squeeze(1); };
    return {x.squeeze(1), stacked(h_n), c_n.empty() ? Tensor() : stacked(c_n)};
  }
  Tensor output = (batch_first && !packed) ? x.transpose(0, 1) : x;
  // One layer and direction (streaming's common case): a view, no copy.
  auto stacked = [](const std::vector<Tensor>& v) { return v.size() == 1 ? v[0].unsqueeze(0) : at::stack(v); };
  return {output, stacked(h_n), c_n.empty() ? Tensor() : stacked(c_n)};
}

std::tuple<Tensor, Tensor, Tensor> lstm_layer_fn(const Tensor& x, const optional<Tensor>& h0,
                                                 const optional<Tensor>& c0, const LayerParams& p,
                                                 const optional<Tensor>& batch_sizes, bool reverse) {
  return lstm_layer(x, h0, c0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, batch_sizes, reverse, p.w_hr);
}

template <std::tuple<Tensor, Tensor> (*Layer)(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                              const OptTensor&, const OptTensor&, const OptTensor&, bool)>
std::tuple<Tensor, Tensor, Tensor> single_state_layer_fn(const Tensor& x, const optional<Tensor>& h0,
                                                         const optional<Tensor>&, const LayerParams& p,
                                                         const optional<Tensor>& batch_sizes, bool reverse) {
  auto [out, h] = Layer(x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, batch_sizes, reverse);
  return {out, h, Tensor()};
}

// A cell step is a one-step layer: (B, I) -> (1, B, I) -> layer -> (B, .).
Tensor as_one_step(const char* op, const Tensor& input) {
  check_defined(input, "input");
  TORCH_CHECK(input.dim() == 2, op, ": input: expected a 2-D tensor (batch, input_size), got a ", input.dim(),
              "-D tensor of size ", input.sizes());
  return input.unsqueeze(0);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm(const Tensor& input, at::TensorList hx, at::TensorList params,
                                        bool has_biases, int64_t num_layers, double dropout, bool train,
                                        bool bidirectional, bool batch_first, const optional<Tensor>& batch_sizes) {
  TORCH_CHECK(hx.empty() || hx.size() == 2, "lstm: hx: expected no tensors or (h_0, c_0), got ", hx.size(),
              " tensors");
  return run_stack("lstm", input, hx.empty() ? Tensor() : hx[0], hx.empty() ? Tensor() : hx[1], params, has_biases,
                   /*can_project=*/true, num_layers, dropout, train, bidirectional, batch_first, batch_sizes,
                   lstm_layer_fn);
}

#define TRE_SINGLE_STATE_STACK(NAME)                                                                              \
  std::tuple<Tensor, Tensor> NAME(const Tensor& input, const optional<Tensor>& hx, at::TensorList params,         \
                                  bool has_biases, int64_t num_layers, double dropout, bool train,                \
                                  bool bidirectional, bool batch_first, const optional<Tensor>& batch_sizes) {    \
    auto r = run_stack(#NAME, input, hx.value_or(Tensor()), Tensor(), params, has_biases, /*can_project=*/false, \
                       num_layers, dropout, train, bidirectional, batch_first, batch_sizes,                       \
                       single_state_layer_fn<NAME##_layer>);                                                      \
    return {std::get<0>(r), std::get<1>(r)};                                                                      \
  }
TRE_SINGLE_STATE_STACK(gru)
TRE_SINGLE_STATE_STACK(rnn_tanh)
TRE_SINGLE_STATE_STACK(rnn_relu)
#undef TRE_SINGLE_STATE_STACK

std::tuple<Tensor, Tensor> lstm_cell(const Tensor& input, const optional<Tensor>& hx, const optional<Tensor>& cx,
                                     const Tensor& weight_ih, const Tensor& weight_hh,
                                     const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh) {
  BelowAutograd below;
  if (!needs_graph({input, value(hx), value(cx), weight_ih, weight_hh, value(bias_ih), value(bias_hh)}))
    below.emplace();
  auto [out, h, c] = lstm_layer(as_one_step("lstm_cell", input), hx, cx, weight_ih, weight_hh, bias_ih, bias_hh);
  return {h, c};
}

#define TRE_SINGLE_STATE_CELL(NAME)                                                                          \
  Tensor NAME##_cell(const Tensor& input, const optional<Tensor>& hx, const Tensor& weight_ih,              \
                     const Tensor& weight_hh, const optional<Tensor>& bias_ih, const optional<Tensor>& bias_hh) { \
    BelowAutograd below;                                                                                     \
    if (!needs_graph({input, value(hx), weight_ih, weight_hh, value(bias_ih), value(bias_hh)}))             \
      below.emplace();                                                                                       \
    return std::get<1>(NAME##_layer(as_one_step(#NAME "_cell", input), hx, weight_ih, weight_hh, bias_ih,   \
                                    bias_hh));                                                               \
  }
TRE_SINGLE_STATE_CELL(gru)
TRE_SINGLE_STATE_CELL(rnn_tanh)
TRE_SINGLE_STATE_CELL(rnn_relu)
#undef TRE_SINGLE_STATE_CELL

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  def_op(m, 
      "lstm(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first, Tensor? batch_sizes=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  for (const char* name : {"gru", "rnn_tanh", "rnn_relu"}) {
    def_op(m, (std::string(name) +
          "(Tensor input, Tensor? hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
          "bool train, bool bidirectional, bool batch_first, Tensor? batch_sizes=None) "
          "-> (Tensor output, Tensor h_n)")
                  .c_str());
  }
  def_op(m, 
      "lstm_cell(Tensor input, Tensor? hx, Tensor? cx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih=None, "
      "Tensor? bias_hh=None) -> (Tensor h, Tensor c)");
  for (const char* name : {"gru_cell", "rnn_tanh_cell", "rnn_relu_cell"}) {
    def_op(m, (std::string(name) +
          "(Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih=None, "
          "Tensor? bias_hh=None) -> Tensor")
                  .c_str());
  }
}

TORCH_LIBRARY_IMPL(torch_rnn_ext, CompositeImplicitAutograd, m) {
  m.impl("lstm", TORCH_FN(lstm));
  m.impl("gru", TORCH_FN(gru));
  m.impl("rnn_tanh", TORCH_FN(rnn_tanh));
  m.impl("rnn_relu", TORCH_FN(rnn_relu));
  m.impl("lstm_cell", TORCH_FN(lstm_cell));
  m.impl("gru_cell", TORCH_FN(gru_cell));
  m.impl("rnn_tanh_cell", TORCH_FN(rnn_tanh_cell));
  m.impl("rnn_relu_cell", TORCH_FN(rnn_relu_cell));
}

}  // namespace torch_rnn_ext
