#pragma once
// Instantiates the time loops of every cell and dtype, and the packed products (packed_gemm.h), for the
// capability this translation unit is compiled for (TRE_CPU_CAPABILITY). Included only by
// recurrence_base.cpp and recurrence_avx2.cpp.
#include "kernels/recurrence_impl.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

template <CellKind K, typename T>
void forward_kernel(const SeqLayout& L, const ForwardArgs<T>& a) {
  recurrence_forward<Cell<K>, T>(L, a);
}

template <CellKind K, typename T>
void backward_kernel(const SeqLayout& L, const BackwardArgs<T>& a) {
  recurrence_backward<Cell<K>, T>(L, a);
}

template <typename T>
void step_products_kernel(int64_t B, int64_t steps, int64_t N, int64_t K, const T* A, int64_t a_step, const T* W,
                          bool trans_b, T* C, int64_t c_step) {
  recurrence_step_products<T>(B, steps, N, K, A, a_step, W, trans_b, C, c_step);
}

#define TRE_INSTANTIATE(K, T)                                                \
  template void forward_kernel<K, T>(const SeqLayout&, const ForwardArgs<T>&); \
  template void backward_kernel<K, T>(const SeqLayout&, const BackwardArgs<T>&);
TRE_FOR_EACH_CELL_DTYPE(TRE_INSTANTIATE)
#undef TRE_INSTANTIATE

template void step_products_kernel<float>(int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                          bool, float*, int64_t);
template void step_products_kernel<double>(int64_t, int64_t, int64_t, int64_t, const double*, int64_t,
                                           const double*, bool, double*, int64_t);
template void packed_product<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                    int64_t, float*, int64_t, bool);
template void packed_product<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                     const double*, int64_t, double*, int64_t, bool);

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
