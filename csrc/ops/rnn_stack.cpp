// Multi-layer, bidirectional recurrent stacks, one op call per module forward. They are composites of
// the per-layer ops (registered CompositeImplicitAutograd): the layers' C++ autograd Functions give the
// gradient, and inter-layer dropout goes through at::dropout in the same order as ATen's own RNN, so a
// seed gives torch.nn's masks.
#include "ops/rnn_stack.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "ops/lstm_layer.h"

namespace torch_rnn_ext {
namespace {

using at::Tensor;

struct StackShape {
  int64_t directions, per_layer;  // tensors per layer and direction in params
};

StackShape check_stack(const char* op, const Tensor& input, at::TensorList params, bool has_biases,
                       int64_t num_layers, double dropout, bool bidirectional) {
  TORCH_CHECK(num_layers >= 1, op, ": num_layers: expected at least 1, got ", num_layers);
  TORCH_CHECK(dropout >= 0 && dropout <= 1, op, ": dropout: expected a probability in [0, 1], got ", dropout);
  const StackShape s{bidirectional ? 2 : 1, has_biases ? 4 : 2};
  const int64_t expected = num_layers * s.directions * s.per_layer;
  TORCH_CHECK(static_cast<int64_t>(params.size()) == expected, op, ": params: expected ", expected,
              " tensors (num_layers=", num_layers, ", directions=", s.directions, ", has_biases=", has_biases,
              "), got ", params.size());
  return s;
}

// Checks an initial state of size (layers * directions, batch, hidden) the way torch.nn words it.
void check_hidden(const Tensor& h, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(h.sizes().equals(expected), "Expected ", name, " size ", expected, ", got ", h.sizes());
}

c10::optional<Tensor> maybe(bool cond, const Tensor& t) {
  return cond ? c10::optional<Tensor>(t) : c10::nullopt;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm(const Tensor& input, at::TensorList hx, at::TensorList params,
                                        bool has_biases, int64_t num_layers, double dropout, bool train,
                                        bool bidirectional, bool batch_first,
                                        const c10::optional<Tensor>& batch_sizes) {
  const char* op = "lstm";
  const StackShape s = check_stack(op, input, params, has_biases, num_layers, dropout, bidirectional);
  const bool packed = present(batch_sizes);
  TORCH_CHECK(packed || input.dim() == 3, op, ": input: expected a 3-D tensor, got a ", input.dim(),
              "-D tensor of size ", input.sizes());
  Tensor x = (batch_first && !packed) ? input.transpose(0, 1) : input;
  const int64_t B = packed ? (batch_sizes->numel() > 0 ? batch_sizes->select(0, 0).item<int64_t>() : 0)
                           : x.size(1);
  const int64_t H = params[1].size(-1), LD = num_layers * s.directions;
  TORCH_CHECK(hx.empty() || hx.size() == 2, op, ": hx: expected no tensors or (h_0, c_0), got ", hx.size(),
              " tensors");
  if (!hx.empty()) {
    check_hidden(hx[0], {LD, B, H}, "hidden[0]");
    check_hidden(hx[1], {LD, B, H}, "hidden[1]");
  }
  std::vector<Tensor> h_n, c_n;
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<Tensor> outs;
    for (int64_t d = 0; d < s.directions; ++d) {
      const int64_t idx = l * s.directions + d;
      const Tensor* p = params.data() + idx * s.per_layer;
      auto [out, h, c] =
          lstm_layer(x, maybe(!hx.empty(), hx.empty() ? Tensor() : hx[0][idx]),
                     maybe(!hx.empty(), hx.empty() ? Tensor() : hx[1][idx]), p[0], p[1], maybe(has_biases, p[2]),
                     maybe(has_biases, has_biases ? p[3] : Tensor()), batch_sizes, d == 1);
      outs.push_back(out);
      h_n.push_back(h);
      c_n.push_back(c);
    }
    x = s.directions == 2 ? at::cat(outs, -1) : outs[0];
    if (dropout != 0 && train && l < num_layers - 1) x = at::dropout(x, dropout, /*train=*/true);
  }
  Tensor output = (batch_first && !packed) ? x.transpose(0, 1) : x;
  return {output, at::stack(h_n), at::stack(c_n)};
}

TORCH_LIBRARY_FRAGMENT(torch_rnn_ext, m) {
  m.def(
      "lstm(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first, Tensor? batch_sizes=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
}

TORCH_LIBRARY_IMPL(torch_rnn_ext, CompositeImplicitAutograd, m) {
  m.impl("lstm", TORCH_FN(lstm));
}

}  // namespace torch_rnn_ext
