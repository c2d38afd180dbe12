// The scan loops compiled with AVX-512 (F, VL, BW, DQ) and FMA, preferring 512-bit vectors (CMake adds
// TRE_AVX512_FLAGS to this file on x86-64 when the compiler takes them).
#define TRE_CPU_CAPABILITY avx512
#include "kernels/scans_instances.h"
