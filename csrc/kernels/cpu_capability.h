#pragma once
// Run-time choice among kernels compiled once per CPU capability.
//
// A capability-specific translation unit (recurrence_{base,avx2,avx512}.cpp, scans_{...}.cpp) defines
// TRE_CPU_CAPABILITY before including the kernel headers, which put everything in
// `inline namespace TRE_CPU_CAPABILITY`, so each variant has its own symbols (no ODR clash between code
// built with and without -mavx2). Capability-independent code declares the instantiations in each
// namespace TRE_FOR_EACH_CAPABILITY names and calls them through TRE_CALL_BEST, which picks one per
// process.
namespace torch_rnn_ext {
namespace kernels {

// Ordered: each level's kernels need the instruction sets of the levels below it.
enum class Capability { base = 0, avx2 = 1, avx512 = 2 };

// The capability the kernels run with, decided once per process: the best one that was built
// (TRE_HAVE_AVX2_KERNELS, TRE_HAVE_AVX512_KERNELS) and that this CPU and OS support, lowered to the one
// named by the environment variable TORCH_RNN_EXT_CPU_CAPABILITY (base, avx2 or avx512) when that is
// set (as ATEN_CPU_CAPABILITY does for ATen). Throws (c10::Error) if the variable holds another value.
Capability capability();

// Its name: "base", "avx2" or "avx512".
const char* cpu_capability();

// Whether this CPU (and OS: GCC's and Clang's __builtin_cpu_supports also check that it saves the
// registers, XCR0) runs what the avx2 / avx512 translation units are compiled for (CMakeLists.txt:
// TRE_AVX2_FLAGS, TRE_AVX512_FLAGS). Header-only, so benchmarks/cpp checks the same list; static, so no
// translation unit ever calls a copy compiled with the other units' flags.
#if defined(__GNUC__) || defined(__clang__)
static inline bool cpu_runs_avx2_kernels() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static inline bool cpu_runs_avx512_kernels() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}
#endif

}  // namespace kernels
}  // namespace torch_rnn_ext

// M(base) M(avx2) M(avx512), for the capabilities this build has kernels for (to declare them).
#if defined(TRE_HAVE_AVX512_KERNELS)
#define TRE_FOR_EACH_CAPABILITY(M) M(base) M(avx2) M(avx512)
#elif defined(TRE_HAVE_AVX2_KERNELS)
#define TRE_FOR_EACH_CAPABILITY(M) M(base) M(avx2)
#else
#define TRE_FOR_EACH_CAPABILITY(M) M(base)
#endif

// avx512::CALL, avx2::CALL or base::CALL, as capability() chooses; CALL is the macro's argument list
// (commas allowed). An expression, possibly void.
#define TRE_CAPABILITY_IS_(C) (::torch_rnn_ext::kernels::capability() == ::torch_rnn_ext::kernels::Capability::C)
#if defined(TRE_HAVE_AVX512_KERNELS)
#define TRE_CALL_BEST(...)                                         \
  (TRE_CAPABILITY_IS_(avx512) ? avx512::__VA_ARGS__                \
   : TRE_CAPABILITY_IS_(avx2) ? avx2::__VA_ARGS__ : base::__VA_ARGS__)
#elif defined(TRE_HAVE_AVX2_KERNELS)
#define TRE_CALL_BEST(...) (TRE_CAPABILITY_IS_(avx2) ? avx2::__VA_ARGS__ : base::__VA_ARGS__)
#else
#define TRE_CALL_BEST(...) (base::__VA_ARGS__)
#endif
