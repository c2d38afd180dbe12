// Chooses, once per process, the time-loop variant compiled for the best instruction set the CPU has.
#include "kernels/recurrence.h"

#include "kernels/cpu_capability.h"
#include "kernels/gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

namespace torch_rnn_ext {
namespace kernels {

// Declarations of the per-capability instantiations (recurrence_instances.h).
#define TRE_DECLARE_KERNELS(NS)                                       \
  namespace NS {                                                      \
  template <CellKind K, typename T>                                   \
  void forward_kernel(const SeqLayout&, const ForwardArgs<T>&);       \
  template <CellKind K, typename T>                                   \
  void backward_kernel(const SeqLayout&, const BackwardArgs<T>&);     \
  template <typename T>                                               \
  void step_products_kernel(const SeqLayout&, int64_t, int64_t,       \
                            const T*, const T*, bool, T*);            \
  }
TRE_FOR_EACH_CAPABILITY(TRE_DECLARE_KERNELS)
#undef TRE_DECLARE_KERNELS

template <CellKind K, typename T>
void forward(const SeqLayout& L, const ForwardArgs<T>& a) {
  TRE_CALL_BEST(forward_kernel<K, T>(L, a));
}

template <CellKind K, typename T>
void backward(const SeqLayout& L, const BackwardArgs<T>& a) {
  TRE_CALL_BEST(backward_kernel<K, T>(L, a));
}

template <typename T>
void step_products(const SeqLayout& L, int64_t N, int64_t K, const T* A, const T* W, bool trans_b, T* C) {
  TRE_CALL_BEST(step_products_kernel<T>(L, N, K, A, W, trans_b, C));
}

bool unshared_steps_on_mkl(const SeqLayout& L, int64_t step_macs) {
  return products_on_mkl() && at::get_num_threads() > 1 && (L.T == 1 || step_macs >= kUnsharedStepMinMacs);
}

int64_t packed_step_max_rows(const SeqLayout& L, int64_t step_macs) {
  return large_products_on_blas() || unshared_steps_on_mkl(L, step_macs) ? kPackedStepMaxRows
                                                                          : std::numeric_limits<int64_t>::max();
}

bool split_batch_rows(const SeqLayout& L, int64_t step_macs) {
  return at::get_num_threads() > 1 && !unshared_steps_on_mkl(L, step_macs);
}

bool uses_packed_weights(const SeqLayout& L, int64_t max_rows) {
  if (!L.batch_sizes) return L.T > 0 && L.batch >= 2 && L.batch <= max_rows;
  for (int64_t t = 0; t < L.T; ++t)
    if (L.batch_sizes[t] >= 2 && L.batch_sizes[t] <= max_rows) return true;
  return false;
}

template <typename T>
void column_sum(const T* X, int64_t rows, int64_t cols, T* out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] += x[c];
  }
}

#define TRE_INSTANTIATE(K, T)                                           \
  template void forward<K, T>(const SeqLayout&, const ForwardArgs<T>&); \
  template void backward<K, T>(const SeqLayout&, const BackwardArgs<T>&);
TRE_FOR_EACH_CELL_DTYPE(TRE_INSTANTIATE)
#undef TRE_INSTANTIATE

template void step_products<float>(const SeqLayout&, int64_t, int64_t, const float*, const float*, bool, float*);
template void step_products<double>(const SeqLayout&, int64_t, int64_t, const double*, const double*, bool, double*);
template void column_sum<float>(const float*, int64_t, int64_t, float*);
template void column_sum<double>(const double*, int64_t, int64_t, double*);

}  // namespace kernels
}  // namespace torch_rnn_ext
