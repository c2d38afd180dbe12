// The time loops compiled with AVX-512 (F, VL, BW, DQ) and FMA, preferring 512-bit vectors (CMake adds
// TRE_AVX512_FLAGS to this file on x86-64 when the compiler takes them). The gate loops vectorise 16
// floats wide; the packed products keep their explicit 32-byte vectors (small_gemm.h).
#define TRE_CPU_CAPABILITY avx512
#include "kernels/recurrence_instances.h"
