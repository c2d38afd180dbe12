// Which kernel variant this process runs (see cpu_capability.h).
#include "kernels/cpu_capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <iterator>

namespace torch_rnn_ext {
namespace kernels {
namespace {

const char* const kNames[] = {"base", "avx2", "avx512"};

// The best capability built and supported here.
Capability best_supported() {
#if defined(__GNUC__) || defined(__clang__)
#if defined(TRE_HAVE_AVX512_KERNELS)
  if (cpu_runs_avx512_kernels()) return Capability::avx512;
#endif
#if defined(TRE_HAVE_AVX2_KERNELS)
  if (cpu_runs_avx2_kernels()) return Capability::avx2;
#endif
#endif
  return Capability::base;
}

Capability choose() {
  Capability best = best_supported();
  const char* env = std::getenv("TORCH_RNN_EXT_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  for (int c = 0; c < static_cast<int>(std::size(kNames)); ++c) {
    if (std::strcmp(env, kNames[c]) == 0) return c < static_cast<int>(best) ? static_cast<Capability>(c) : best;
  }
  TORCH_CHECK(false, "TORCH_RNN_EXT_CPU_CAPABILITY must be base, avx2 or avx512 (or unset), got '", env, "'");
}

}  // namespace

Capability capability() {
  static const Capability c = choose();  // a throw leaves it undecided: the next call checks again
  return c;
}

const char* cpu_capability() { return kNames[static_cast<int>(capability())]; }

}  // namespace kernels
}  // namespace torch_rnn_ext
