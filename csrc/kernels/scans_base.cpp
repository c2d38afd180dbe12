// The scan loops compiled for the baseline instruction set of the target.
#define TRE_CPU_CAPABILITY base
#include "kernels/scans_instances.h"
