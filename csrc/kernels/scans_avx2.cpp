// The scan loops compiled with AVX2 and FMA (CMake adds -mavx2 -mfma to this file on x86-64 only).
#define TRE_CPU_CAPABILITY avx2
#include "kernels/scans_instances.h"
