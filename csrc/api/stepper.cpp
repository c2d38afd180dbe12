#include "api/stepper.h"

#include <cstring>

#include "kernels/gemm.h"        // product
#include "kernels/packing.h"     // kPackMinRows, packed_b_size
#include "kernels/recurrence.h"  // forward, SeqLayout, ForwardArgs
#include "ops/layer_shapes.h"    // check_layer_shape, with_cell

namespace torch_rnn_ext {

namespace {

at::Tensor owned_copy(const at::Tensor& t) { return t.contiguous().clone(); }

}  // namespace

Stepper::Stepper(const std::string& mode, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                 const optional<at::Tensor>& bias_ih, const optional<at::Tensor>& bias_hh, int64_t batch)
    : batch_(batch) {
  const char* op = "Stepper";
  TORCH_CHECK(batch >= 1, op, ": batch: expected at least 1 row per step, got ", batch);
  check_defined(weight_ih, "weight_ih");
  check_dim(weight_ih, 2, "weight_ih");
  const auto opts = weight_ih.options().memory_format(at::MemoryFormat::Contiguous);
  with_cell(mode, [&](auto kind) {
    constexpr kernels::CellKind K = decltype(kind)::value;
    using Cell = kernels::CellTraits<K>;
    // The layer ops' own checks, on a one-step input of this batch (never read).
    const at::Tensor step_input = at::empty({1, batch, weight_ih.size(1)}, weight_ih.options());
    const auto g = check_layer_shape<int64_t>(op, c10::Device(c10::kCPU), step_input, weight_ih, weight_hh,
                                              bias_ih, bias_hh, nullopt, nullopt, Cell::kGates,
                                              /*can_project=*/false);
    input_size_ = g.I;
    hidden_ = g.H;
    const int64_t GH = Cell::kGates * hidden_;
    c_ = Cell::kHasCell ? at::zeros({batch, hidden_}, opts) : at::Tensor();
    gh_ = Cell::kSameGateGrads ? at::Tensor() : at::empty({batch, GH}, opts);  // GRU's recurrent product
    b_hh_ = present(bias_hh) ? owned_copy(*bias_hh) : at::zeros({GH}, opts);
    gi_ = at::empty({batch, GH}, opts);
    AT_DISPATCH_FLOATING_TYPES(weight_ih.scalar_type(), "Stepper", [&] {
      step_fn_ = &Stepper::step_impl<K, scalar_t>;
      // The time loop's packed copy of W_hh, for steps of 2 or more rows (the loop packs it once per call).
      if (batch >= 2) w_hh_packed_ = at::empty({kernels::packed_b_size<scalar_t>(hidden_, GH)}, opts);
    });
  });
  w_ih_transposed_ = batch >= kernels::kPackMinRows;
  w_ih_ = owned_copy(w_ih_transposed_ ? weight_ih.t() : weight_ih);
  w_hh_ = owned_copy(weight_hh);
  b_ih_ = present(bias_ih) ? owned_copy(*bias_ih) : at::Tensor();
  h_ = at::zeros({batch, hidden_}, opts);
  out_ = at::empty({batch, hidden_}, opts);
}

const at::Tensor& Stepper::step(const at::Tensor& x) {
  check_defined(x, "x");
  check_device(x, c10::Device(c10::kCPU), "x");
  check_dtype(x, w_hh_.scalar_type(), "x");
  TORCH_CHECK(x.dim() == 2 && x.size(0) == batch_ && x.size(1) == input_size_,
              "Stepper.step: x: expected size (batch, input_size) = (", batch_, ", ", input_size_, "), got ",
              x.sizes());
  TORCH_CHECK(x.is_contiguous(), "Stepper.step: x: expected a contiguous tensor, got strides ", x.strides());
  (this->*step_fn_)(x);
  return h_;
}

template <kernels::CellKind K, typename T>
void Stepper::step_impl(const at::Tensor& x) {
  const int64_t B = batch_, I = input_size_, GH = kernels::CellTraits<K>::kGates * hidden_;
  T* gi = gi_.data_ptr<T>();
  // gi = x W_ih^T + b_ih: the input product, as the layer op makes it for a one-step input.
  if (b_ih_.defined()) {
    for (int64_t b = 0; b < B; ++b) std::memcpy(gi + b * GH, b_ih_.data_ptr<T>(), sizeof(T) * GH);
  }
  kernels::product<T>(false, !w_ih_transposed_, B, GH, I, x.data_ptr<T>(), I, w_ih_.data_ptr<T>(),
                      w_ih_transposed_ ? GH : I, gi, GH, b_ih_.defined());
  const kernels::SeqLayout L{nullptr, nullptr, /*T=*/1, /*reverse=*/false, B};
  const int64_t step_macs = B * GH * hidden_;
  const int64_t max_rows = kernels::packed_step_max_rows(L, step_macs);
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
  // The packed copy only where the step uses it (the kernel packs into the buffer it is given).
  T* w_hh_packed = kernels::uses_packed_weights(L, max_rows) ? ptr(w_hh_packed_) : nullptr;
  kernels::forward<K, T>(L, {hidden_, hidden_, gi, ptr(w_hh_), ptr(b_hh_), nullptr, ptr(h_), ptr(c_), ptr(out_),
                             nullptr, ptr(gh_), nullptr, w_hh_packed, nullptr, max_rows,
                             kernels::split_batch_rows(L, step_macs)});
}

void Stepper::set_state(const at::Tensor& h, const optional<at::Tensor>& c) {
  check_like<int64_t>(h, h_, {batch_, hidden_}, "h");
  if (c_.defined()) {
    TORCH_CHECK(present(c), "Stepper.set_state: c: an LSTM's state needs c (batch, hidden_size)");
    check_like<int64_t>(*c, c_, {batch_, hidden_}, "c");
    c_.copy_(*c);
  } else {
    TORCH_CHECK(!present(c), "Stepper.set_state: c: only an LSTM has a cell state");
  }
  h_.copy_(h);
}

void Stepper::reset() {
  h_.zero_();
  if (c_.defined()) c_.zero_();
}

}  // namespace torch_rnn_ext
