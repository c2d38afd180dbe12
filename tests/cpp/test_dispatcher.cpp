// Every torch_rnn_ext op called by name through the dispatcher with a boxed call, the way the TorchScript
// interpreter (and torch.ops in Python) calls it: arguments as IValues, checked against the schema and
// completed with its defaults, then OperatorHandle::callBoxed. Each result is compared with the typed C++
// API (and, for the stacks and cells, with ATen's own RNN); each op rejects a bad argument with a
// c10::Error that names the argument. The op list is asserted, so a new op cannot go untested here.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "ops/gated_delta_rule.h"
#include "ops/recurrent_layers.h"
#include "ops/rnn_stack.h"
#include "ops/selective_scan.h"
#include "ops/wkv4.h"

namespace {

using at::Tensor;
using c10::IValue;
using Kwargs = std::unordered_map<std::string, IValue>;

// The ops this file tests: all that the library registers.
const std::set<std::string> kExpectedOps = {
    "_kernel_info", "_parallel_threads", "_layer_products",
    "lstm_layer", "gru_layer", "rnn_tanh_layer", "rnn_relu_layer",
    "_recurrent_layer_forward", "_recurrent_layer_backward",
    "lstm", "gru", "rnn_tanh", "rnn_relu",
    "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "selective_scan", "_selective_scan_forward", "_selective_scan_backward",
    "wkv4", "_wkv4_forward", "_wkv4_backward",
    "gated_delta_rule", "_gated_delta_rule_forward", "_gated_delta_rule_backward",
};

std::set<std::string>& called_ops() {
  static std::set<std::string> names;
  return names;
}

// torch_rnn_ext::<name> called as the interpreter does: the schema checks the argument types and appends
// the defaults of the arguments not given, then the boxed kernel runs. Returns the stack of results.
std::vector<IValue> call_boxed(const std::string& name, std::vector<IValue> args, const Kwargs& kwargs = {}) {
  const std::string qualified = "torch_rnn_ext::" + name;
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "");
  op.schema().checkAndNormalizeInputs(args, kwargs);
  torch::jit::Stack stack(std::move(args));
  op.callBoxed(&stack);
  EXPECT_EQ(stack.size(), op.schema().returns().size()) << name;
  called_ops().insert(name);
  return stack;
}

Tensor tensor_of(const IValue& v) { return v.isNone() ? Tensor() : v.toTensor(); }

std::vector<Tensor> tensors_of(const std::vector<IValue>& stack) {
  std::vector<Tensor> out;
  for (const IValue& v : stack) out.push_back(tensor_of(v));
  return out;
}

IValue opt(const Tensor& t) { return t.defined() ? IValue(t) : IValue(); }
IValue list(const std::vector<Tensor>& ts) {
  c10::List<Tensor> l;
  for (const Tensor& t : ts) l.push_back(t);
  return IValue(l);
}
IValue mask(const std::vector<bool>& m) {
  c10::List<bool> l;
  for (bool b : m) l.push_back(b);
  return IValue(l);
}

// Bitwise equal, or both undefined.
::testing::AssertionResult same(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) {
    if (a.defined() == b.defined()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "one tensor is undefined";
  }
  if (a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && torch::equal(a, b))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "differ: sizes " << a.sizes() << " vs " << b.sizes();
}

void expect_same(const std::vector<Tensor>& boxed, const std::vector<Tensor>& typed, const std::string& what) {
  ASSERT_EQ(boxed.size(), typed.size()) << what;
  for (size_t i = 0; i < boxed.size(); ++i) EXPECT_TRUE(same(boxed[i], typed[i])) << what << ", result " << i;
}

// The message of a c10::Error thrown by f ("" if none was thrown).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

#define EXPECT_ERROR_NAMES(call, needle)                                       \
  do {                                                                         \
    const std::string msg = error_of([&] { call; });                           \
    EXPECT_NE(msg, "") << "expected a c10::Error naming " << (needle);        \
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;                     \
  } while (0)

Tensor randn(at::IntArrayRef sizes, at::ScalarType dtype = at::kFloat) {
  return torch::randn(sizes, torch::TensorOptions().dtype(dtype));
}

// Weights of one layer/direction of a cell with `gates` gates.
struct Layer {
  Tensor w_ih, w_hh, b_ih, b_hh;
};
Layer make_layer(int64_t gates, int64_t I, int64_t H, at::ScalarType dtype = at::kFloat) {
  return {randn({gates * H, I}, dtype) * 0.4, randn({gates * H, H}, dtype) * 0.4, randn({gates * H}, dtype) * 0.2,
          randn({gates * H}, dtype) * 0.2};
}

constexpr int64_t T = 5, B = 3, I = 4, H = 6;

struct Cell {
  const char* name;  // "lstm", "gru", "rnn_tanh", "rnn_relu"
  int64_t gates;
  bool has_cell;
};
const Cell kCells[] = {{"lstm", 4, true}, {"gru", 3, false}, {"rnn_tanh", 1, false}, {"rnn_relu", 1, false}};

// The typed C++ API of a one-state cell's layer op.
using SingleStateLayer = std::tuple<Tensor, Tensor> (*)(const Tensor&, const torch_rnn_ext::OptTensor&, const Tensor&,
                                                        const Tensor&, const torch_rnn_ext::OptTensor&,
                                                        const torch_rnn_ext::OptTensor&,
                                                        const torch_rnn_ext::OptTensor&, bool);
SingleStateLayer single_state_layer(const std::string& cell) {
  if (cell == "gru") return torch_rnn_ext::gru_layer;
  return cell == "rnn_tanh" ? torch_rnn_ext::rnn_tanh_layer : torch_rnn_ext::rnn_relu_layer;
}

// --- the op list --------------------------------------------------------------------------------------

TEST(Dispatcher, RegisteredOpsAreExactlyTheOnesTestedHere) {
  std::set<std::string> found;
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    const std::string prefix = "torch_rnn_ext::";
    if (name.name.rfind(prefix, 0) != 0) continue;
    EXPECT_EQ(name.overload_name, "") << name.name << " has an overload: test it here";
    found.insert(name.name.substr(prefix.size()));
  }
  EXPECT_EQ(found, kExpectedOps) << "an op was added or removed: call it in this file and update kExpectedOps";
}

TEST(Dispatcher, KernelInfo) {
  auto r = call_boxed("_kernel_info", {});
  ASSERT_TRUE(r[0].isString());
  EXPECT_NE(r[0].toStringRef(), "");
}

// The library's at::parallel_for really runs on torch's threads (built with torch's threading flags; a
// build without them ran every parallel_for on the calling thread, with no error anywhere).
TEST(Dispatcher, ParallelForUsesTorchThreads) {
  const int saved = at::get_num_threads();
  for (int n : {1, 2, 3}) {
    at::set_num_threads(n);
    auto r = call_boxed("_parallel_threads", {});
    EXPECT_EQ(r[0].toInt(), n) << "at::set_num_threads(" << n << ")";
  }
  at::set_num_threads(saved);
}

// The benchmark's floor op (a layer's products alone, states of ones): forward x W_ih^T + 1 W_hh^T.
TEST(Dispatcher, LayerProductsMakeTheProjectionAndSteps) {
  torch::manual_seed(0);
  const Tensor x = randn({T, B, I}), w_ih = randn({3 * H, I}), w_hh = randn({3 * H, H});
  const Tensor states = torch::ones({T * B, H});
  const Tensor r = tensor_of(call_boxed("_layer_products", {x, w_ih, w_hh, states, false})[0]);
  EXPECT_TRUE(r.allclose(x.reshape({T * B, I}).matmul(w_ih.t()) + w_hh.sum(1), 1e-4, 1e-5));
  EXPECT_ERROR_NAMES(call_boxed("_layer_products", {x, w_ih, randn({2 * H, H}), states, false}), "weight_hh:");
  EXPECT_ERROR_NAMES(call_boxed("_layer_products", {x, w_ih, w_hh, torch::ones({T, H}), false}), "states:");
}

// --- single layers --------------------------------------------------------------------------------------

TEST(Dispatcher, LayersMatchTypedApi) {
  torch::manual_seed(0);
  Tensor x = randn({T, B, I}), h0 = randn({B, H}), c0 = randn({B, H});
  const Tensor bsz = torch::tensor({3, 3, 2, 1, 1}, torch::kLong);
  Tensor packed = randn({10, I});
  for (const Cell& cell : kCells) {
    SCOPED_TRACE(cell.name);
    Layer p = make_layer(cell.gates, I, H);
    const std::string op = std::string(cell.name) + "_layer";
    for (bool reverse : {false, true}) {
      // Required arguments positional, the optional ones by keyword, as a script would write them.
      Kwargs kw{{"bias_ih", p.b_ih}, {"bias_hh", p.b_hh}, {"reverse", reverse}};
      std::vector<Tensor> boxed, typed;
      if (cell.has_cell) {
        boxed = tensors_of(call_boxed(op, {x, h0, c0, p.w_ih, p.w_hh}, kw));
        auto [o, h, c] = torch_rnn_ext::lstm_layer(x, h0, c0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, c10::nullopt, reverse);
        typed = {o, h, c};
      } else {
        boxed = tensors_of(call_boxed(op, {x, h0, p.w_ih, p.w_hh}, kw));
        auto [o, h] = single_state_layer(cell.name)(x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, c10::nullopt, reverse);
        typed = {o, h};
      }
      expect_same(boxed, typed, op);
    }
    // Packed rows, no biases, no initial state (all defaults from the schema).
    std::vector<Tensor> boxed, typed;
    if (cell.has_cell) {
      boxed = tensors_of(call_boxed(op, {packed, IValue(), IValue(), p.w_ih, p.w_hh}, {{"batch_sizes", bsz}}));
      auto [o, h, c] = torch_rnn_ext::lstm_layer(packed, c10::nullopt, c10::nullopt, p.w_ih, p.w_hh, c10::nullopt,
                                                 c10::nullopt, bsz);
      typed = {o, h, c};
    } else {
      boxed = tensors_of(call_boxed(op, {packed, IValue(), p.w_ih, p.w_hh}, {{"batch_sizes", bsz}}));
      auto [o, h] = single_state_layer(cell.name)(packed, c10::nullopt, p.w_ih, p.w_hh, c10::nullopt, c10::nullopt,
                                                  bsz, false);
      typed = {o, h};
    }
    expect_same(boxed, typed, op + " packed");
  }
}

TEST(Dispatcher, LstmLayerWithProjectionMatchesTypedApi) {
  torch::manual_seed(1);
  const int64_t P = 2;
  Layer p = make_layer(4, I, H);
  p.w_hh = randn({4 * H, P}) * 0.4;
  Tensor w_hr = randn({P, H}) * 0.4, x = randn({T, B, I});
  auto boxed = tensors_of(call_boxed("lstm_layer", {x, IValue(), IValue(), p.w_ih, p.w_hh, p.b_ih, p.b_hh},
                                     {{"weight_hr", w_hr}}));
  auto [o, h, c] = torch_rnn_ext::lstm_layer(x, c10::nullopt, c10::nullopt, p.w_ih, p.w_hh, p.b_ih, p.b_hh,
                                             c10::nullopt, false, w_hr);
  expect_same(boxed, {o, h, c}, "lstm_layer with weight_hr");
  EXPECT_EQ(boxed[0].sizes(), (at::IntArrayRef{T, B, P}));
}

// The private forward returns what the public op returns, plus the workspace when asked to save; the
// private backward, given that workspace, returns the gradients autograd computes through the typed API.
TEST(Dispatcher, PrivateLayerForwardAndBackwardMatchTypedApiAndAutograd) {
  torch::manual_seed(2);
  for (const Cell& cell : kCells) {
    SCOPED_TRACE(cell.name);
    const auto f64 = at::kDouble;
    Layer p = make_layer(cell.gates, I, H, f64);
    Tensor x = randn({T, B, I}, f64), h0 = randn({B, H}, f64), c0 = cell.has_cell ? randn({B, H}, f64) : Tensor();

    const std::vector<IValue> args{cell.name, x, h0, opt(c0), p.w_ih, p.w_hh, p.b_ih, p.b_hh, IValue(), IValue(),
                                   /*reverse=*/true, /*save=*/true};
    auto fwd = tensors_of(call_boxed("_recurrent_layer_forward", args));
    auto nosave = args;
    nosave.back() = false;
    auto fwd_nosave = tensors_of(call_boxed("_recurrent_layer_forward", nosave));
    EXPECT_TRUE(fwd[3].defined());
    EXPECT_FALSE(fwd_nosave[3].defined());
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(same(fwd[i], fwd_nosave[i])) << "saving changed result " << i;

    // Autograd through the typed API.
    std::vector<Tensor> leaves{x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh};
    if (cell.has_cell) leaves.insert(leaves.begin() + 2, c0);
    for (Tensor& t : leaves) t = t.detach().requires_grad_(true);
    std::vector<Tensor> outs;
    if (cell.has_cell) {
      auto [o, h, c] = torch_rnn_ext::lstm_layer(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                                 leaves[6], c10::nullopt, true);
      outs = {o, h, c};
    } else {
      auto [o, h] = single_state_layer(cell.name)(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                                  c10::nullopt, true);
      outs = {o, h, Tensor()};
    }
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(same(fwd[i], outs[i].defined() ? outs[i].detach() : Tensor())) << i;
    std::vector<Tensor> weights;
    Tensor loss = torch::zeros({}, f64);
    for (const Tensor& o : outs) {
      weights.push_back(o.defined() ? randn(o.sizes(), f64) : Tensor());
      if (o.defined()) loss = loss + (o * weights.back()).sum();
    }
    auto grads = torch::autograd::grad({loss}, leaves);

    auto bwd = tensors_of(call_boxed(
        "_recurrent_layer_backward",
        {cell.name, weights[0], weights[1], opt(weights[2]), x, h0, opt(c0), p.w_ih, p.w_hh, p.b_ih, p.b_hh,
         IValue(), fwd[0], fwd[3], IValue(), true, mask({true, true, cell.has_cell, true, true, true, true, false})}));
    // bwd: grad_input, grad_hx, grad_cx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_weight_hr
    std::vector<Tensor> expected{grads[0], grads[1]};
    expected.push_back(cell.has_cell ? grads[2] : Tensor());
    for (size_t i = cell.has_cell ? 3 : 2; i < grads.size(); ++i) expected.push_back(grads[i]);
    expected.push_back(Tensor());
    expect_same(bwd, expected, "_recurrent_layer_backward");
  }
}

// --- stacks and cells --------------------------------------------------------------------------------

TEST(Dispatcher, StacksMatchTypedApiAndAten) {
  torch::manual_seed(3);
  const int64_t L = 2, D = 2;
  const auto f64 = at::kDouble;
  Tensor x = randn({B, T, I}, f64);  // batch_first
  for (const Cell& cell : kCells) {
    SCOPED_TRACE(cell.name);
    std::vector<Tensor> params;
    for (int64_t l = 0; l < L; ++l)
      for (int64_t d = 0; d < D; ++d) {
        Layer p = make_layer(cell.gates, l == 0 ? I : D * H, H, f64);
        params.insert(params.end(), {p.w_ih, p.w_hh, p.b_ih, p.b_hh});
      }
    Tensor h0 = randn({L * D, B, H}, f64), c0 = randn({L * D, B, H}, f64);
    const std::string name = cell.name;
    std::vector<Tensor> boxed, typed, aten;
    if (cell.has_cell) {
      boxed = tensors_of(call_boxed("lstm", {x, list({h0, c0}), list(params), true, L, 0.0, false, true, true}));
      auto [o, h, c] = torch_rnn_ext::lstm(x, {h0, c0}, params, true, L, 0.0, false, true, true);
      typed = {o, h, c};
      const std::vector<Tensor> hx{h0, c0};
      auto [ao, ah, ac] = at::lstm(x, at::TensorList(hx), at::TensorList(params), true, L, 0.0, false, true, true);
      aten = {ao, ah, ac};
    } else {
      boxed = tensors_of(call_boxed(name, {x, h0, list(params), true, L, 0.0, false, true, true}));
      auto fn = name == "gru"        ? torch_rnn_ext::gru
                : name == "rnn_tanh" ? torch_rnn_ext::rnn_tanh
                                     : torch_rnn_ext::rnn_relu;
      auto [o, h] = fn(x, h0, params, true, L, 0.0, false, true, true, c10::nullopt);
      typed = {o, h};
      // ATen's stacks have a second (packed) overload; this is the (input, hx, params, ...) one.
      std::tuple<Tensor, Tensor> (*afn)(const Tensor&, const Tensor&, at::TensorList, bool, int64_t, double, bool,
                                        bool, bool) = at::rnn_relu;
      if (name == "gru") afn = at::gru;
      if (name == "rnn_tanh") afn = at::rnn_tanh;
      auto [ao, ah] = afn(x, h0, params, true, L, 0.0, false, true, true);
      aten = {ao, ah};
    }
    expect_same(boxed, typed, name);
    for (size_t i = 0; i < aten.size(); ++i) EXPECT_TRUE(torch::allclose(boxed[i], aten[i], 1e-12, 1e-12)) << i;
  }
}

TEST(Dispatcher, StackDefaultsAndEmptyStateMatchTypedApi) {
  torch::manual_seed(4);
  Layer p = make_layer(4, I, H);
  Tensor x = randn({T, B, I});
  // hx=[] (zeros) and batch_sizes left to its default.
  auto boxed = tensors_of(
      call_boxed("lstm", {x, list({}), list({p.w_ih, p.w_hh, p.b_ih, p.b_hh}), true, 1, 0.0, false, false, false}));
  auto [o, h, c] = torch_rnn_ext::lstm(x, {}, {p.w_ih, p.w_hh, p.b_ih, p.b_hh}, true, 1, 0.0, false, false, false);
  expect_same(boxed, {o, h, c}, "lstm, empty hx");
}

TEST(Dispatcher, CellsMatchTypedApiAndAten) {
  torch::manual_seed(5);
  const auto f64 = at::kDouble;
  Tensor x = randn({B, I}, f64), h0 = randn({B, H}, f64), c0 = randn({B, H}, f64);
  for (const Cell& cell : kCells) {
    SCOPED_TRACE(cell.name);
    Layer p = make_layer(cell.gates, I, H, f64);
    const std::string name = std::string(cell.name) + "_cell";
    if (cell.has_cell) {
      auto boxed = tensors_of(call_boxed(name, {x, h0, c0, p.w_ih, p.w_hh, p.b_ih, p.b_hh}));
      auto [h, c] = torch_rnn_ext::lstm_cell(x, h0, c0, p.w_ih, p.w_hh, p.b_ih, p.b_hh);
      expect_same(boxed, {h, c}, name);
      auto [ah, ac] = at::lstm_cell(x, {h0, c0}, p.w_ih, p.w_hh, p.b_ih, p.b_hh);
      EXPECT_TRUE(torch::allclose(boxed[0], ah, 1e-12, 1e-12));
      EXPECT_TRUE(torch::allclose(boxed[1], ac, 1e-12, 1e-12));
      // No state and no biases: schema defaults.
      auto bare = tensors_of(call_boxed(name, {x, IValue(), IValue(), p.w_ih, p.w_hh}));
      auto [bh, bc] = torch_rnn_ext::lstm_cell(x, c10::nullopt, c10::nullopt, p.w_ih, p.w_hh);
      expect_same(bare, {bh, bc}, name + " bare");
    } else {
      auto fn = cell.gates == 3 ? torch_rnn_ext::gru_cell
                : std::string(cell.name) == "rnn_tanh" ? torch_rnn_ext::rnn_tanh_cell
                                                        : torch_rnn_ext::rnn_relu_cell;
      auto afn = cell.gates == 3 ? at::gru_cell : std::string(cell.name) == "rnn_tanh" ? at::rnn_tanh_cell
                                                                                       : at::rnn_relu_cell;
      auto boxed = tensors_of(call_boxed(name, {x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh}));
      expect_same(boxed, {fn(x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh)}, name);
      EXPECT_TRUE(torch::allclose(boxed[0], afn(x, h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh), 1e-12, 1e-12));
      auto bare = tensors_of(call_boxed(name, {x, IValue(), p.w_ih, p.w_hh}));
      expect_same(bare, {fn(x, c10::nullopt, p.w_ih, p.w_hh, c10::nullopt, c10::nullopt)}, name + " bare");
    }
  }
}

// --- scans -----------------------------------------------------------------------------------------------

struct ScanArgs {
  Tensor u, delta, A, Bv, Cv, D, z, delta_bias, initial_state;
};
ScanArgs make_scan(at::ScalarType dtype) {
  const int64_t batch = 2, dim = 4, N = 3, L = 7;
  return {randn({batch, dim, L}, dtype),       randn({batch, dim, L}, dtype) * 0.5, -randn({dim, N}, dtype).abs(),
          randn({batch, N, L}, dtype),         randn({batch, 2, N, L}, dtype),      randn({dim}, dtype),
          randn({batch, dim, L}, dtype),       randn({dim}, dtype) * 0.1,           randn({batch, dim, N}, dtype)};
}

TEST(Dispatcher, SelectiveScanMatchesTypedApi) {
  torch::manual_seed(6);
  ScanArgs s = make_scan(at::kFloat);
  auto boxed = tensors_of(call_boxed("selective_scan", {s.u, s.delta, s.A, s.Bv, s.Cv},
                                     {{"D", s.D}, {"z", s.z}, {"delta_bias", s.delta_bias},
                                      {"delta_softplus", true}, {"initial_state", s.initial_state}}));
  auto [out, last] = torch_rnn_ext::selective_scan(s.u, s.delta, s.A, s.Bv, s.Cv, s.D, s.z, s.delta_bias, true,
                                                   s.initial_state);
  expect_same(boxed, {out, last}, "selective_scan");
  auto bare = tensors_of(call_boxed("selective_scan", {s.u, s.delta, s.A, s.Bv, s.Cv}));
  auto [bout, blast] = torch_rnn_ext::selective_scan(s.u, s.delta, s.A, s.Bv, s.Cv);
  expect_same(bare, {bout, blast}, "selective_scan, defaults");
}

TEST(Dispatcher, PrivateSelectiveScanForwardAndBackwardMatchTypedApiAndAutograd) {
  torch::manual_seed(7);
  ScanArgs s = make_scan(at::kDouble);
  const std::vector<IValue> args{s.u, s.delta, s.A, s.Bv, s.Cv, s.D, s.z, s.delta_bias, true, s.initial_state};
  auto fwd = tensors_of(call_boxed("_selective_scan_forward", args));
  std::vector<Tensor> leaves{s.u, s.delta, s.A, s.Bv, s.Cv, s.D, s.z, s.delta_bias, s.initial_state};
  for (Tensor& t : leaves) t = t.detach().requires_grad_(true);
  auto [out, last] = torch_rnn_ext::selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                                   leaves[6], leaves[7], true, leaves[8]);
  EXPECT_TRUE(same(fwd[0], out.detach()));
  EXPECT_TRUE(same(fwd[1], last.detach()));
  Tensor g_out = randn(out.sizes(), at::kDouble), g_last = randn(last.sizes(), at::kDouble);
  auto grads = torch::autograd::grad({(out * g_out).sum() + (last * g_last).sum()}, leaves);
  std::vector<IValue> bargs{g_out, g_last};
  bargs.insert(bargs.end(), args.begin(), args.end());
  bargs.push_back(fwd[2]);
  bargs.push_back(mask(std::vector<bool>(9, true)));
  auto bwd = tensors_of(call_boxed("_selective_scan_backward", bargs));
  expect_same(bwd, grads, "_selective_scan_backward");
}

TEST(Dispatcher, Wkv4MatchesTypedApi) {
  torch::manual_seed(8);
  Tensor decay = randn({5}), first = randn({5}), k = randn({2, 6, 5}), v = randn({2, 6, 5});
  auto [y0, state] = torch_rnn_ext::wkv4(decay, first, k, v);
  auto boxed = tensors_of(call_boxed("wkv4", {decay, first, k, v}, {{"state", state}}));
  auto [y, new_state] = torch_rnn_ext::wkv4(decay, first, k, v, state);
  expect_same(boxed, {y, new_state}, "wkv4");
  expect_same(tensors_of(call_boxed("wkv4", {decay, first, k, v})), {y0, state}, "wkv4, no state");
}

TEST(Dispatcher, PrivateWkv4ForwardAndBackwardMatchTypedApiAndAutograd) {
  torch::manual_seed(9);
  const auto f64 = at::kDouble;
  Tensor decay = randn({5}, f64), first = randn({5}, f64), k = randn({2, 6, 5}, f64), v = randn({2, 6, 5}, f64);
  Tensor state = std::get<1>(torch_rnn_ext::wkv4(decay, first, randn({2, 3, 5}, f64), randn({2, 3, 5}, f64)));
  const std::vector<IValue> args{decay, first, k, v, state};
  auto fwd = tensors_of(call_boxed("_wkv4_forward", args));
  std::vector<Tensor> leaves{decay, first, k, v, state};
  for (Tensor& t : leaves) t = t.detach().requires_grad_(true);
  auto [y, new_state] = torch_rnn_ext::wkv4(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]);
  EXPECT_TRUE(same(fwd[0], y.detach()));
  EXPECT_TRUE(same(fwd[1], new_state.detach()));
  Tensor g_y = randn(y.sizes(), f64), g_state = randn(new_state.sizes(), f64);
  auto grads = torch::autograd::grad({(y * g_y).sum() + (new_state * g_state).sum()}, leaves);
  std::vector<IValue> bargs{g_y, g_state};
  bargs.insert(bargs.end(), args.begin(), args.end());
  bargs.push_back(fwd[2]);
  bargs.push_back(mask(std::vector<bool>(5, true)));
  expect_same(tensors_of(call_boxed("_wkv4_backward", bargs)), grads, "_wkv4_backward");
}

TEST(Dispatcher, GatedDeltaRuleMatchesTypedApi) {
  torch::manual_seed(10);
  Tensor q = randn({2, 5, 1, 4}), k = randn({2, 5, 1, 4}), v = randn({2, 5, 2, 3}), g = -torch::rand({2, 5, 2}),
         beta = torch::rand({2, 5, 2}), s0 = randn({2, 2, 4, 3});
  auto [o, s] = torch_rnn_ext::gated_delta_rule(q, k, v, g, beta, 0.5, s0, true);
  auto boxed = tensors_of(call_boxed("gated_delta_rule", {q, k, v, g, beta},
                                     {{"scale", 0.5}, {"initial_state", s0}, {"use_qk_l2norm_in_kernel", true}}));
  expect_same(boxed, {o, s}, "gated_delta_rule");
  auto [o0, s00] = torch_rnn_ext::gated_delta_rule(q, k, v, {}, beta);
  expect_same(tensors_of(call_boxed("gated_delta_rule", {q, k, v, IValue(), beta})), {o0, s00},
              "gated_delta_rule, defaults");
}

TEST(Dispatcher, PrivateGatedDeltaRuleForwardAndBackwardMatchTypedApiAndAutograd) {
  torch::manual_seed(11);
  const auto f64 = at::kDouble;
  Tensor q = randn({1, 7, 1, 4}, f64), k = randn({1, 7, 1, 4}, f64), v = randn({1, 7, 2, 3}, f64),
         g = -torch::rand({1, 7, 2, 4}, f64), beta = torch::rand({1, 7, 2}, f64), s0 = randn({2, 2, 4, 3}, f64);
  Tensor cu = torch::tensor({0, 3, 7}, at::kLong);
  const std::vector<IValue> args{q, k, v, g, beta, 0.7, s0, true, cu};
  auto fwd = tensors_of(call_boxed("_gated_delta_rule_forward", args));
  std::vector<Tensor> leaves{q, k, v, g, beta, s0};
  for (Tensor& t : leaves) t = t.detach().requires_grad_(true);
  auto [o, s] = torch_rnn_ext::gated_delta_rule(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], 0.7,
                                                leaves[5], true, cu);
  EXPECT_TRUE(same(fwd[0], o.detach()));
  EXPECT_TRUE(same(fwd[1], s.detach()));
  Tensor g_o = randn(o.sizes(), f64), g_s = randn(s.sizes(), f64);
  auto grads = torch::autograd::grad({(o * g_o).sum() + (s * g_s).sum()}, leaves);
  std::vector<IValue> bargs{g_o, g_s};
  bargs.insert(bargs.end(), args.begin(), args.end());
  bargs.push_back(fwd[2]);
  bargs.push_back(mask(std::vector<bool>(6, true)));
  expect_same(tensors_of(call_boxed("_gated_delta_rule_backward", bargs)), grads, "_gated_delta_rule_backward");
}

// --- errors: a c10::Error that names the argument -------------------------------------------------------

TEST(Dispatcher, SchemaRejectsWrongTypesAndMissingArgumentsByName) {
  Layer p = make_layer(4, I, H);
  Tensor x = randn({T, B, I});
  EXPECT_ERROR_NAMES(call_boxed("lstm_layer", {x, IValue(), IValue(), int64_t{3}, p.w_hh}), "'weight_ih'");
  EXPECT_ERROR_NAMES(call_boxed("lstm_layer", {x, IValue(), IValue(), p.w_ih}), "'weight_hh'");
  EXPECT_ERROR_NAMES(call_boxed("lstm", {x, list({}), list({p.w_ih}), true, 1.5, 0.0, false, false, false}),
                     "'num_layers'");
  EXPECT_ERROR_NAMES(call_boxed("wkv4", {p.w_ih, p.w_ih, x, x}, {{"state", std::string("no")}}), "'state'");
}

TEST(Dispatcher, LayerErrorsNameTheArgument) {
  Tensor x = randn({T, B, I}), h0 = randn({B, H});
  Layer l4 = make_layer(4, I, H), l3 = make_layer(3, I, H), l1 = make_layer(1, I, H);
  EXPECT_ERROR_NAMES(call_boxed("lstm_layer", {x, IValue(), IValue(), l4.w_ih, l4.w_hh.narrow(0, 0, 3 * H)}),
                     "weight_hh:");
  EXPECT_ERROR_NAMES(call_boxed("lstm_layer", {x, h0, randn({B, H + 1}), l4.w_ih, l4.w_hh}), "cx:");
  EXPECT_ERROR_NAMES(call_boxed("gru_layer", {x, randn({B + 1, H}), l3.w_ih, l3.w_hh}), "hx:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_tanh_layer", {x, IValue(), l1.w_ih, l1.w_hh}, {{"bias_ih", randn({H + 1})}}),
                     "bias_ih:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_relu_layer", {x.to(at::kDouble), IValue(), l1.w_ih, l1.w_hh}), "weight_hh:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_relu_layer", {randn({T * B, I}), IValue(), l1.w_ih, l1.w_hh},
                                {{"batch_sizes", torch::full({T}, B, torch::kInt)}}),
                     "batch_sizes:");
  EXPECT_ERROR_NAMES(call_boxed("gru_layer", {randn({B, I}), IValue(), l3.w_ih, l3.w_hh}), "input:");

  const std::vector<IValue> fwd{"lstm", x, IValue(), IValue(), l4.w_ih, l4.w_hh, IValue(), IValue(), IValue(),
                                IValue(), false, true};
  auto bad_mode = fwd;
  bad_mode[0] = "lsmt";
  EXPECT_ERROR_NAMES(call_boxed("_recurrent_layer_forward", bad_mode), "mode:");
  auto r = tensors_of(call_boxed("_recurrent_layer_forward", fwd));
  const std::vector<bool> all(8, true);
  EXPECT_ERROR_NAMES(call_boxed("_recurrent_layer_backward",
                                {"lstm", r[0], IValue(), IValue(), x, IValue(), IValue(), l4.w_ih, l4.w_hh, IValue(),
                                 IValue(), IValue(), r[0], r[3].narrow(1, 0, H), IValue(), false, mask(all)}),
                     "workspace:");
  EXPECT_ERROR_NAMES(call_boxed("_recurrent_layer_backward",
                                {"lstm", r[0], randn({B, H + 2}), IValue(), x, IValue(), IValue(), l4.w_ih, l4.w_hh,
                                 IValue(), IValue(), IValue(), r[0], r[3], IValue(), false, mask(all)}),
                     "grad_h_n:");
}

TEST(Dispatcher, StackAndCellErrorsNameTheArgument) {
  Tensor x = randn({T, B, I});
  Layer l4 = make_layer(4, I, H), l3 = make_layer(3, I, H), l1 = make_layer(1, I, H);
  const auto p4 = list({l4.w_ih, l4.w_hh, l4.b_ih, l4.b_hh}), p3 = list({l3.w_ih, l3.w_hh, l3.b_ih, l3.b_hh}),
             p1 = list({l1.w_ih, l1.w_hh, l1.b_ih, l1.b_hh});
  EXPECT_ERROR_NAMES(call_boxed("lstm", {x, list({}), p4, true, int64_t{0}, 0.0, false, false, false}), "num_layers:");
  EXPECT_ERROR_NAMES(call_boxed("lstm", {x, list({randn({1, B, H})}), p4, true, 1, 0.0, false, false, false}), "hx:");
  EXPECT_ERROR_NAMES(call_boxed("gru", {x, IValue(), p3, true, 1, 1.5, true, false, false}), "dropout:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_tanh", {x, IValue(), p1, true, 2, 0.0, false, false, false}), "params:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_relu", {x, randn({2, B, H}), p1, true, 1, 0.0, false, false, false}), "hidden");

  Tensor xc = randn({B, I}), h0 = randn({B, H});
  EXPECT_ERROR_NAMES(call_boxed("lstm_cell", {x, IValue(), IValue(), l4.w_ih, l4.w_hh}), "input:");
  EXPECT_ERROR_NAMES(call_boxed("gru_cell", {xc, h0, l3.w_ih.narrow(0, 0, H), l3.w_hh}), "weight_ih:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_tanh_cell", {xc, randn({B, H - 1}), l1.w_ih, l1.w_hh}), "hx:");
  EXPECT_ERROR_NAMES(call_boxed("rnn_relu_cell", {xc, h0, l1.w_ih, l1.w_hh, l1.b_ih, randn({2 * H})}), "bias_hh:");
}

TEST(Dispatcher, ScanErrorsNameTheArgument) {
  ScanArgs s = make_scan(at::kFloat);
  EXPECT_ERROR_NAMES(call_boxed("selective_scan", {s.u, s.delta, s.A.t(), s.Bv, s.Cv}), "A:");
  EXPECT_ERROR_NAMES(call_boxed("selective_scan", {s.u, s.delta, s.A, s.Bv, s.Cv}, {{"delta_bias", randn({1})}}),
                     "delta_bias:");
  EXPECT_ERROR_NAMES(
      call_boxed("_selective_scan_forward", {s.u, s.delta, s.A, s.Bv, s.Cv, IValue(), s.z.narrow(2, 0, 2), IValue(),
                                             false, IValue()}),
      "z:");
  auto fwd = tensors_of(call_boxed("_selective_scan_forward",
                                   {s.u, s.delta, s.A, s.Bv, s.Cv, IValue(), IValue(), IValue(), false, IValue()}));
  EXPECT_ERROR_NAMES(call_boxed("_selective_scan_backward",
                                {fwd[0], IValue(), s.u, s.delta, s.A, s.Bv, s.Cv, IValue(), IValue(), IValue(), false,
                                 IValue(), fwd[2].to(at::kDouble), mask(std::vector<bool>(9, true))}),
                     "checkpoints:");

  Tensor decay = randn({5}), first = randn({5}), k = randn({2, 6, 5}), v = randn({2, 6, 5});
  EXPECT_ERROR_NAMES(call_boxed("wkv4", {decay, randn({4}), k, v}), "time_first:");
  EXPECT_ERROR_NAMES(call_boxed("_wkv4_forward", {decay, first, k, v, randn({2, 2, 5})}), "state:");
  auto w = tensors_of(call_boxed("_wkv4_forward", {decay, first, k, v, IValue()}));
  EXPECT_ERROR_NAMES(call_boxed("_wkv4_backward", {randn({2, 5, 5}), IValue(), decay, first, k, v, IValue(), w[2],
                                                   mask(std::vector<bool>(5, true))}),
                     "grad_y:");
}

// Last in this file (gtest runs a file's tests in order): every registered op was called successfully.
TEST(Dispatcher, ZZEveryRegisteredOpWasCalled) {
  if (::testing::GTEST_FLAG(filter) != "*") GTEST_SKIP() << "only meaningful when the whole file runs";
  EXPECT_EQ(called_ops(), kExpectedOps);
}

}  // namespace
