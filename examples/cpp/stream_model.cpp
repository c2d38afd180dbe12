// Streaming from C++: steps an LSTM one time step per call, with the state carried between calls, the way
// a real-time loop (audio frames, sensor samples) runs it, and reports the microseconds per step.
//
// The weights come from the scripted torch_rnn_ext.LSTM(64, H) modules that make_stream_model.py saved
// (H = 64 and 256). Three ways to step them, each checked against the outputs Python computed over the
// whole sequence in one call (to rounding: one call projects every input in one product, a step only its
// own), then timed:
//   - torch_rnn_ext::Stepper (csrc/api/stepper.h): the layer's weights, state and buffers held once, a
//     step runs the time loop on them (no allocation, no dispatcher): what a real-time loop should use;
//   - the op torch_rnn_ext::lstm_cell through a typed dispatcher handle, under c10::InferenceMode;
//   - the scripted module's forward, called once per step with its state;
// and, for comparison, what a LibTorch user has without this library: ATen's own at::lstm_cell on the
// same weights (timed only).
// The timing is reported, not asserted.
//
// Usage: stream_model DIR [STEPS]   (DIR written by make_stream_model.py; STEPS timed per variant, default
//        20000)
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "api/stepper.h"
#include "compare.h"

namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using LstmCell = std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, const OptTensor&);

// Median over blocks of `block` calls of step(i) of the time per call, in microseconds.
template <typename Step>
double us_per_step(int64_t steps, Step&& step) {
  const int64_t block = 1000, blocks = std::max<int64_t>(1, steps / block);
  std::vector<double> times;
  for (int64_t b = 0; b < blocks; ++b) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < block; ++i) step(b * block + i);
    const std::chrono::duration<double, std::micro> dt = std::chrono::steady_clock::now() - t0;
    times.push_back(dt.count() / block);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

bool run(const std::string& dir, int64_t hidden, int64_t steps, const torch::jit::Module& data) {
  torch::jit::Module model = torch::jit::load(dir + "/lstm_" + std::to_string(hidden) + ".pt");
  model.eval();
  const Tensor w_ih = model.attr("weight_ih_l0").toTensor(), w_hh = model.attr("weight_hh_l0").toTensor();
  const OptTensor b_ih = model.attr("bias_ih_l0").toTensor(), b_hh = model.attr("bias_hh_l0").toTensor();
  const Tensor input = data.attr("input").toTensor();  // (T, 1, I)
  const int64_t T = input.size(0);
  static const auto lstm_cell =
      c10::Dispatcher::singleton().findSchemaOrThrow("torch_rnn_ext::lstm_cell", "").typed<LstmCell>();

  c10::InferenceMode inference;
  std::vector<Tensor> xs;  // the inputs of the steps, (1, I) each
  for (int64_t t = 0; t < T; ++t) xs.push_back(input[t]);

  // Correctness: each way steps through the sequence; the outputs must match the one-call output.
  torch_rnn_ext::Stepper stepper("lstm", w_ih, w_hh, b_ih, b_hh);
  OptTensor h = at::zeros({1, hidden}), c = at::zeros({1, hidden});
  std::vector<Tensor> by_stepper, by_op;
  for (int64_t t = 0; t < T; ++t) {
    by_stepper.push_back(stepper.step(xs[t]).clone());
    std::tie(*h, *c) = lstm_cell.call(xs[t], h, c, w_ih, w_hh, b_ih, b_hh);
    by_op.push_back(*h);
  }
  const std::string H = std::to_string(hidden);
  const Tensor expected = data.attr("output_" + H).toTensor();
  bool ok = check_output("Stepper output, H " + H, at::stack(by_stepper), expected, false);
  ok &= check_output("Stepper c_n, H " + H, stepper.c().unsqueeze(0), data.attr("c_n_" + H).toTensor(), false);
  ok &= check_output("lstm_cell output, H " + H, at::stack(by_op), expected, false);
  ok &= check_output("lstm_cell c_n, H " + H, c->unsqueeze(0), data.attr("c_n_" + H).toTensor(), false);
  // The Stepper runs the op's kernels on the same operands: the same bits.
  if (!at::equal(at::stack(by_stepper), at::stack(by_op))) {
    std::cerr << "FAIL: the Stepper's outputs differ from lstm_cell's, H " << H << "\n";
    ok = false;
  }

  // Timing, state carried from step to step.
  const double stepper_us = us_per_step(steps, [&](int64_t i) { stepper.step(xs[i % T]); });
  const double op_us = us_per_step(steps, [&](int64_t i) {
    std::tie(*h, *c) = lstm_cell.call(xs[i % T], h, c, w_ih, w_hh, b_ih, b_hh);
  });
  const double aten_us = us_per_step(steps, [&](int64_t i) {
    std::tie(*h, *c) = at::lstm_cell(xs[i % T], {*h, *c}, w_ih, w_hh, *b_ih, *b_hh);
  });
  auto state = c10::ivalue::Tuple::create({h->unsqueeze(0), c->unsqueeze(0)});
  std::vector<Tensor> xs3;
  for (const Tensor& x : xs) xs3.push_back(x.unsqueeze(0));  // (1, 1, I)
  const double module_us = us_per_step(steps / 4, [&](int64_t i) {
    state = model.forward({xs3[i % T], state}).toTupleRef().elements()[1].toTuple();
  });
  std::printf("LSTM(%d, %d), batch 1, us per step (%d torch thread(s)): Stepper %.2f, lstm_cell op %.2f, "
              "scripted module forward %.2f; ATen's at::lstm_cell %.2f\n",
              static_cast<int>(input.size(2)), static_cast<int>(hidden), at::get_num_threads(), stepper_us, op_us,
              module_us, aten_us);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::cerr << "usage: " << argv[0] << " DIR [STEPS] (DIR written by examples/cpp/make_stream_model.py)\n";
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t steps = argc == 3 ? std::stoll(argv[2]) : 20000;
  // One stream per core, as a real-time loop runs: the products of a step this small do not repay
  // spreading over threads.
  at::set_num_threads(1);
  if (!c10::Dispatcher::singleton().findSchema({"torch_rnn_ext::lstm_cell", ""}).has_value()) {
    std::cerr << "FAIL: torch_rnn_ext ops are not registered: link libtorch_rnn_ext.so with --no-as-needed\n";
    return 1;
  }
  try {
    const torch::jit::Module data = torch::jit::load(dir + "/data.pt");
    bool ok = true;
    for (int64_t hidden : {64, 256}) ok &= run(dir, hidden, steps, data);
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "FAIL: " << e.what() << "\n";
    return 1;
  }
}
