#pragma once
// Instantiates the scan loops (selective scan, WKV-4, gated delta rule) for every dtype, for the capability this translation unit is compiled for
// (TRE_CPU_CAPABILITY). Included only by scans_{base,avx2,avx512}.cpp.
#include "kernels/delta_rule.h"
#include "kernels/selective_scan.h"
#include "kernels/wkv4.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

#define TRE_INSTANTIATE(T)                                                                                \
  template void selective_scan_forward_kernel<T>(const ScanChannel<T>&, T*, T*, T*);                     \
  template void selective_scan_block_kernel<T>(const ScanBlock<T>&, const T*, T*, T*);                   \
  template void selective_scan_backward_kernel<T>(const ScanChannel<T>&, const T*, const T*, T*,         \
                                                  const ScanChannelGrads<T>&, T*);                       \
  template void wkv4_forward_kernel<T>(const WkvBlock<T>&, const WkvState<T>&, T*, const WkvState<T>&,  \
                                       int64_t);                                                         \
  template void wkv4_backward_kernel<T>(const WkvBlock<T>&, const WkvState<T>&, int64_t, const T*,      \
                                        const WkvState<T>&, T*, T*, T*, T*, T*);                         \
  template void delta_rule_forward_kernel<T>(const DeltaPanel<T>&, const DeltaStates<T>&, T*, T*, int64_t, \
                                             T*);                                                          \
  template void delta_rule_backward_kernel<T>(const DeltaPanel<T>&, const DeltaStates<T>&, const T*,     \
                                              int64_t, int64_t, const T*, bool, bool,                    \
                                              const DeltaGrads<T>&, T*, T*);
TRE_INSTANTIATE(float)
TRE_INSTANTIATE(double)
#undef TRE_INSTANTIATE

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
