// Chooses, once per process, the scan loops compiled for the best instruction set the CPU has
// (cpu_capability.h).
#include "kernels/scans.h"

#include "kernels/cpu_capability.h"

namespace torch_rnn_ext {
namespace kernels {

// Declarations of the per-capability instantiations (scans_instances.h).
#define TRE_DECLARE_KERNELS(NS)                                                                            \
  namespace NS {                                                                                           \
  template <typename T>                                                                                    \
  void selective_scan_forward_kernel(const ScanChannel<T>&, T*, T*, T*);                                   \
  template <typename T>                                                                                    \
  void selective_scan_block_kernel(const ScanBlock<T>&, const T*, T*, T*);                                 \
  template <typename T>                                                                                    \
  void selective_scan_backward_kernel(const ScanChannel<T>&, const T*, const T*, T*,                       \
                                      const ScanChannelGrads<T>&, T*);                                     \
  template <typename T>                                                                                    \
  void wkv4_forward_kernel(const WkvBlock<T>&, const WkvState<T>&, T*, const WkvState<T>&, int64_t);       \
  template <typename T>                                                                                    \
  void wkv4_backward_kernel(const WkvBlock<T>&, const WkvState<T>&, int64_t, const T*, const WkvState<T>&, \
                            T*, T*, T*, T*, T*);                                                           \
  template <typename T>                                                                                    \
  void delta_rule_forward_kernel(const DeltaPanel<T>&, const DeltaStates<T>&, T*, T*, int64_t, T*);       \
  template <typename T>                                                                                    \
  void delta_rule_backward_kernel(const DeltaPanel<T>&, const DeltaStates<T>&, const T*, int64_t,          \
                                  int64_t, const T*, bool, bool, const DeltaGrads<T>&, T*, T*);            \
  }
TRE_FOR_EACH_CAPABILITY(TRE_DECLARE_KERNELS)
#undef TRE_DECLARE_KERNELS

template <typename T>
void selective_scan_forward(const ScanChannel<T>& p, T* h, T* out, T* checkpoints) {
  TRE_CALL_BEST(selective_scan_forward_kernel<T>(p, h, out, checkpoints));
}

template <typename T>
void selective_scan_block(const ScanBlock<T>& p, const T* h_in, T* h, T* out) {
  TRE_CALL_BEST(selective_scan_block_kernel<T>(p, h_in, h, out));
}

template <typename T>
void selective_scan_backward(const ScanChannel<T>& p, const T* checkpoints, const T* grad_out, T* gh,
                             const ScanChannelGrads<T>& g, T* workspace) {
  TRE_CALL_BEST(selective_scan_backward_kernel<T>(p, checkpoints, grad_out, gh, g, workspace));
}

template <typename T>
void wkv4_forward(const WkvBlock<T>& p, const WkvState<T>& s, T* y, const WkvState<T>& checkpoints,
                  int64_t chunk_stride) {
  TRE_CALL_BEST(wkv4_forward_kernel<T>(p, s, y, checkpoints, chunk_stride));
}

template <typename T>
void wkv4_backward(const WkvBlock<T>& p, const WkvState<T>& checkpoints, int64_t chunk_stride,
                   const T* grad_y, const WkvState<T>& gs, T* gk, T* gv, T* gw, T* gu, T* workspace) {
  TRE_CALL_BEST(wkv4_backward_kernel<T>(p, checkpoints, chunk_stride, grad_y, gs, gk, gv, gw, gu, workspace));
}

template <typename T>
void delta_rule_forward(const DeltaPanel<T>& p, const DeltaStates<T>& s, T* last, T* o, int64_t o_stride,
                        T* workspace) {
  TRE_CALL_BEST(delta_rule_forward_kernel<T>(p, s, last, o, o_stride, workspace));
}

template <typename T>
void delta_rule_backward(const DeltaPanel<T>& p, const DeltaStates<T>& s, const T* grad_o, int64_t o_stride,
                         int64_t o_col_stride, const T* grad_last, bool ends_sequence, bool starts_sequence,
                         const DeltaGrads<T>& g, T* dS, T* workspace) {
  TRE_CALL_BEST(delta_rule_backward_kernel<T>(p, s, grad_o, o_stride, o_col_stride, grad_last, ends_sequence,
                                              starts_sequence, g, dS, workspace));
}

#define TRE_INSTANTIATE(T)                                                                                  \
  template void selective_scan_forward<T>(const ScanChannel<T>&, T*, T*, T*);                              \
  template void selective_scan_block<T>(const ScanBlock<T>&, const T*, T*, T*);                            \
  template void selective_scan_backward<T>(const ScanChannel<T>&, const T*, const T*, T*,                  \
                                           const ScanChannelGrads<T>&, T*);                                \
  template void wkv4_forward<T>(const WkvBlock<T>&, const WkvState<T>&, T*, const WkvState<T>&, int64_t); \
  template void wkv4_backward<T>(const WkvBlock<T>&, const WkvState<T>&, int64_t, const T*,               \
                                 const WkvState<T>&, T*, T*, T*, T*, T*);                                \
  template void delta_rule_forward<T>(const DeltaPanel<T>&, const DeltaStates<T>&, T*, T*, int64_t, T*);  \
  template void delta_rule_backward<T>(const DeltaPanel<T>&, const DeltaStates<T>&, const T*, int64_t,    \
                                       int64_t, const T*, bool, bool, const DeltaGrads<T>&, T*, T*);
TRE_INSTANTIATE(float)
TRE_INSTANTIATE(double)
#undef TRE_INSTANTIATE

}  // namespace kernels
}  // namespace torch_rnn_ext
