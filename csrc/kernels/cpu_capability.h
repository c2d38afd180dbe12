#pragma once
// Run-time choice among kernels compiled once per CPU capability.
//
// A capability-specific translation unit (recurrence_{base,avx2}.cpp, scans_{base,avx2}.cpp) defines
// TRE_CPU_CAPABILITY before including the kernel headers, which put everything in
// `inline namespace TRE_CPU_CAPABILITY`, so each variant has its own symbols (no ODR clash between code
// built with and without -mavx2). Capability-independent code declares the instantiations in namespaces
// base and avx2 and calls them through TRE_CALL_BEST, which picks one per process.
namespace torch_rnn_ext {
namespace kernels {

// True when the AVX2+FMA variants were built (TRE_HAVE_AVX2_KERNELS) and this CPU has AVX2 and FMA;
// decided once per process.
bool use_avx2_kernels();

// The instruction set the kernels run with ("avx2" or "base").
const char* cpu_capability();

}  // namespace kernels
}  // namespace torch_rnn_ext

// avx2::CALL or base::CALL, as use_avx2_kernels() chooses; CALL is the macro's argument list (commas
// allowed). An expression, possibly void.
#ifdef TRE_HAVE_AVX2_KERNELS
#define TRE_CALL_BEST(...) \
  (::torch_rnn_ext::kernels::use_avx2_kernels() ? avx2::__VA_ARGS__ : base::__VA_ARGS__)
#else
#define TRE_CALL_BEST(...) (base::__VA_ARGS__)
#endif
