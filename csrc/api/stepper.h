#pragma once
// torch_rnn_ext::Stepper: one recurrent layer stepped one time step per call from C++, for real-time loops
// (audio frames, sensor samples, control) that must not allocate or pay an op call per step.
//
// It holds a copy of an LSTM, GRU or RNN layer's weights as torch stores them (torch.nn's weight_ih_l0,
// weight_hh_l0, bias_ih_l0, bias_hh_l0), the state and every buffer a step needs, allocated once by the
// constructor. step() checks x's shape and dtype, then runs the layer's time loop for one step on raw
// pointers: no tensor is created, no op goes through the dispatcher and nothing is allocated (for a
// batch of up to 16 rows at one torch thread, and any batch from 2 threads up; larger batches at one
// thread multiply through BLAS). The results equal the layer ops' (lstm_layer, ...) called one step at a
// time, bit for bit. Inference only: no autograd.
//
//   torch_rnn_ext::Stepper lstm("lstm", w_ih, w_hh, b_ih, b_hh);   // batch 1, zero state
//   for (;;) { const at::Tensor& h = lstm.step(frame); ... }        // frame: (1, input_size)
#include <ATen/ATen.h>

#include <string>

#include "compat.h"
#include "kernels/cell_traits.h"

namespace torch_rnn_ext {

class Stepper {
 public:
  // mode: "lstm", "gru", "rnn_tanh" or "rnn_relu"; weights on the CPU, float32 or float64, shaped as
  // torch.nn's (weight_ih (G*H, I), weight_hh (G*H, H), biases (G*H) or absent); batch: rows per step.
  Stepper(const std::string& mode, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
          const optional<at::Tensor>& bias_ih = nullopt, const optional<at::Tensor>& bias_hh = nullopt,
          int64_t batch = 1);

  // One step: x (batch, input_size), contiguous, of the weights' dtype. Returns h after the step, (batch,
  // hidden_size): the Stepper's own state tensor, which the next step overwrites (clone it to keep it).
  const at::Tensor& step(const at::Tensor& x);

  // The state: h (batch, hidden_size) and, for an LSTM, c (batch, hidden_size); undefined c otherwise.
  const at::Tensor& h() const { return h_; }
  const at::Tensor& c() const { return c_; }
  // Sets the state (copied in; c only for an LSTM), or zeros it.
  void set_state(const at::Tensor& h, const optional<at::Tensor>& c = nullopt);
  void reset();

  int64_t batch() const { return batch_; }
  int64_t input_size() const { return input_size_; }
  int64_t hidden_size() const { return hidden_; }

 private:
  template <kernels::CellKind K, typename T>
  void step_impl(const at::Tensor& x);

  int64_t batch_, input_size_, hidden_;
  // w_ih_ as stored (G*H, I) for batches below packed_gemm's packing threshold, else transposed (I, G*H),
  // so that the input product reads it in place either way (no packed copy per step).
  at::Tensor w_ih_, w_hh_, b_ih_, b_hh_;
  bool w_ih_transposed_;
  at::Tensor h_, c_, gi_, out_, gh_, w_hh_packed_;
  void (Stepper::*step_fn_)(const at::Tensor&);
};

}  // namespace torch_rnn_ext
