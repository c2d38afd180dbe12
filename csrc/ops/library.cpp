// The torch_rnn_ext operator library. Each op declares its schemas in its own file (ops/<op>.cpp) with
// TORCH_LIBRARY_FRAGMENT; this file opens the namespace once and reports how the library was built.
#include <torch/library.h>

#include <string>

#include "kernels/gemm.h"
#include "kernels/recurrence.h"

namespace torch_rnn_ext {
namespace {

// Which instruction set the time loops run with on this CPU, and how multi-row products are done.
std::string kernel_info() {
  return std::string(kernels::cpu_capability()) + " time loops, " +
         (kernels::gemm_uses_blas() ? "BLAS" : "ATen mm") + " products";
}

}  // namespace
}  // namespace torch_rnn_ext

TORCH_LIBRARY(torch_rnn_ext, m) {
  m.def("_kernel_info() -> str", &torch_rnn_ext::kernel_info);
}
