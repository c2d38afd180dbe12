#pragma once
// Instantiates the time loops of every cell and dtype for the capability this translation unit is
// compiled for (TRE_CPU_CAPABILITY). Included only by recurrence_base.cpp and recurrence_avx2.cpp.
#include "kernels/recurrence_impl.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

template <CellKind K, typename T>
void forward_kernel(const SeqLayout& L, int64_t H, const T* gi, const T* w_hh, const T* b_hh, T* h, T* c,
                    T* out, T* saved, T* gh) {
  recurrence_forward<Cell<K>, T>(L, H, gi, w_hh, b_hh, h, c, out, saved, gh);
}

template <CellKind K, typename T>
void backward_kernel(const SeqLayout& L, int64_t H, const T* w_hh, const T* saved, const T* out, const T* h0,
                     const T* c0, const T* zeros, const T* grad_out, T* dh, T* dc, T* dgi, T* dgh, T* h_prev) {
  recurrence_backward<Cell<K>, T>(L, H, w_hh, saved, out, h0, c0, zeros, grad_out, dh, dc, dgi, dgh, h_prev);
}

#define TRE_INSTANTIATE(K, T)                                                                               \
  template void forward_kernel<K, T>(const SeqLayout&, int64_t, const T*, const T*, const T*, T*, T*, T*, \
                                     T*, T*);                                                             \
  template void backward_kernel<K, T>(const SeqLayout&, int64_t, const T*, const T*, const T*, const T*,  \
                                      const T*, const T*, const T*, T*, T*, T*, T*, T*);
TRE_FOR_EACH_CELL_DTYPE(TRE_INSTANTIATE)
#undef TRE_INSTANTIATE

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
