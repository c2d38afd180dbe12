#pragma once
// Instantiates the time loops of every cell and dtype, and the packed products (packed_gemm.h), for the
// capability this translation unit is compiled for (TRE_CPU_CAPABILITY). Included only by
// recurrence_{base,avx2,avx512}.cpp.
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
void step_products_kernel(const SeqLayout& L, int64_t N, int64_t K, const T* A, const T* W, bool trans_b, T* C) {
  recurrence_step_products<T>(L, N, K, A, W, trans_b, C);
}

#define TRE_INSTANTIATE(K, T)                                                \
  template void forward_kernel<K, T>(const SeqLayout&, const ForwardArgs<T>&); \
  template void backward_kernel<K, T>(const SeqLayout&, const BackwardArgs<T>&);
TRE_FOR_EACH_CELL_DTYPE(TRE_INSTANTIATE)
#undef TRE_INSTANTIATE

template void step_products_kernel<float>(const SeqLayout&, int64_t, int64_t, const float*, const float*, bool,
                                          float*);
template void step_products_kernel<double>(const SeqLayout&, int64_t, int64_t, const double*, const double*, bool,
                                           double*);
template void packed_product<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                    int64_t, float*, int64_t, bool);
template void packed_product<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                     const double*, int64_t, double*, int64_t, bool);

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
