// Chooses, once per process, the time-loop variant compiled for the best instruction set the CPU has.
#include "kernels/recurrence.h"

#include <algorithm>

namespace torch_rnn_ext {
namespace kernels {

// Declarations of the per-capability instantiations (recurrence_instances.h).
#define TRE_DECLARE_KERNELS(NS)                                                                              \
  namespace NS {                                                                                             \
  template <CellKind K, typename T>                                                                          \
  void forward_kernel(const SeqLayout&, int64_t, const T*, const T*, const T*, T*, T*, T*, T*, T*);          \
  template <CellKind K, typename T>                                                                          \
  void backward_kernel(const SeqLayout&, int64_t, const T*, const T*, const T*, const T*, const T*,         \
                       const T*, const T*, T*, T*, T*, T*, T*);                                              \
  }
TRE_DECLARE_KERNELS(base)
#ifdef TRE_HAVE_AVX2_KERNELS
TRE_DECLARE_KERNELS(avx2)
#endif
#undef TRE_DECLARE_KERNELS

namespace {
bool use_avx2() {
#if defined(TRE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}
}  // namespace

const char* cpu_capability() { return use_avx2() ? "avx2" : "base"; }

template <CellKind K, typename T>
void forward(const SeqLayout& L, int64_t H, const T* gi, const T* w_hh, const T* b_hh, T* h, T* c, T* out,
             T* saved, T* gh) {
#ifdef TRE_HAVE_AVX2_KERNELS
  if (use_avx2()) return avx2::forward_kernel<K, T>(L, H, gi, w_hh, b_hh, h, c, out, saved, gh);
#endif
  base::forward_kernel<K, T>(L, H, gi, w_hh, b_hh, h, c, out, saved, gh);
}

template <CellKind K, typename T>
void backward(const SeqLayout& L, int64_t H, const T* w_hh, const T* saved, const T* out, const T* h0,
              const T* c0, const T* zeros, const T* grad_out, T* dh, T* dc, T* dgi, T* dgh, T* h_prev) {
#ifdef TRE_HAVE_AVX2_KERNELS
  if (use_avx2())
    return avx2::backward_kernel<K, T>(L, H, w_hh, saved, out, h0, c0, zeros, grad_out, dh, dc, dgi, dgh,
                                       h_prev);
#endif
  base::backward_kernel<K, T>(L, H, w_hh, saved, out, h0, c0, zeros, grad_out, dh, dc, dgi, dgh, h_prev);
}

template <typename T>
void column_sum(const T* X, int64_t rows, int64_t cols, T* out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] += x[c];
  }
}

#define TRE_INSTANTIATE(K, T)                                                                               \
  template void forward<K, T>(const SeqLayout&, int64_t, const T*, const T*, const T*, T*, T*, T*, T*, T*); \
  template void backward<K, T>(const SeqLayout&, int64_t, const T*, const T*, const T*, const T*, const T*, \
                               const T*, const T*, T*, T*, T*, T*, T*);
TRE_FOR_EACH_CELL_DTYPE(TRE_INSTANTIATE)
#undef TRE_INSTANTIATE

template void column_sum<float>(const float*, int64_t, int64_t, float*);
template void column_sum<double>(const double*, int64_t, int64_t, double*);

}  // namespace kernels
}  // namespace torch_rnn_ext
