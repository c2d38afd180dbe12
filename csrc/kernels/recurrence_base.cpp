// The time loops compiled for the baseline instruction set of the target.
#define TRE_CPU_CAPABILITY base
#include "kernels/recurrence_instances.h"
