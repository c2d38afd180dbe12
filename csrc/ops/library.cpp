// The torch_rnn_ext operator library. Each op declares its schemas in its own file (ops/<op>.cpp) with
// TORCH_LIBRARY_FRAGMENT; this file opens the namespace once and reports how the library was built.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
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

// Into how many pieces an at::parallel_for compiled into this library splits n >= threads items (one per
// thread that runs; a build without the threading flags torch was built with runs it all on the calling
// thread, in one piece).
int64_t parallel_threads() {
  std::atomic<int64_t> pieces{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { pieces.fetch_add(1); });
  return pieces.load();
}

}  // namespace
}  // namespace torch_rnn_ext

TORCH_LIBRARY(torch_rnn_ext, m) {
  m.def("_kernel_info() -> str", &torch_rnn_ext::kernel_info);
  m.def("_parallel_threads() -> int", &torch_rnn_ext::parallel_threads);
}
