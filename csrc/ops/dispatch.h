#pragma once
// Looking up an op's typed handle in the dispatcher (for C++ APIs and autograd kernels that call ops by
// name). Callers keep the handle in a function-local static, so the lookup happens once per op.
#include <ATen/core/dispatch/Dispatcher.h>

namespace torch_rnn_ext {

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace torch_rnn_ext
