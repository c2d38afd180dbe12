// Which kernel variant this process runs (see cpu_capability.h).
#include "kernels/cpu_capability.h"

namespace torch_rnn_ext {
namespace kernels {

bool use_avx2_kernels() {
#if defined(TRE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

const char* cpu_capability() { return use_avx2_kernels() ? "avx2" : "base"; }

}  // namespace kernels
}  // namespace torch_rnn_ext
