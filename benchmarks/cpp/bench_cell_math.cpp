// The gate math of each cell alone, on data in cache: the pointwise part of a time step with no product
// and no memory traffic beyond L2, as the time loops of one capability compile it. CMake builds it twice
// with the flags of recurrence_avx2.cpp (bench_cell_math) and of recurrence_avx512.cpp
// (bench_cell_math_avx512, TRE_CPU_CAPABILITY=avx512). It tells how much of a layer's time over its
// products' (the benchmark's bound) is arithmetic. Usage: bench_cell_math[_avx512] [repeats_scale];
// prints us per step and ns per hidden unit.
#ifndef TRE_CPU_CAPABILITY
#define TRE_CPU_CAPABILITY avx2
#endif
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/cells.h"
#include "kernels/cpu_capability.h"  // cpu_runs_avx512_kernels

namespace {

using torch_rnn_ext::kernels::CellKind;
using torch_rnn_ext::kernels::Cell;  // of the inline namespace TRE_CPU_CAPABILITY

// Best of 5 timings of `reps` steps of B rows of H units (inference: nothing saved), in us per step.
template <CellKind K>
double us_per_step(int64_t B, int64_t H, int reps) {
  const int64_t G = Cell<K>::kGates * H;
  std::vector<float> gi(B * G), gh(B * G), b(G), h(B * H), c(B * H), out(B * H);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (auto* v : {&gi, &gh, &b, &h, &c}) std::generate(v->begin(), v->end(), [&] { return normal(rng); });
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      for (int64_t i = 0; i < B; ++i)
        Cell<K>::template forward<false>(H, gi.data() + i * G, gh.data() + i * G, b.data(), h.data() + i * H,
                                         c.data() + i * H, out.data() + i * H, static_cast<float*>(nullptr));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  volatile float sink = out[0];  // keep the results alive
  (void)sink;
  return best / reps * 1e6;
}

template <CellKind K>
void report(const char* name, int64_t B, int64_t H, int reps) {
  const double us = us_per_step<K>(B, H, reps);
  std::printf("%-8s B=%-3lld H=%-4lld %8.2f us/step %6.2f ns/unit\n", name, static_cast<long long>(B),
              static_cast<long long>(H), us, us * 1e3 / static_cast<double>(B * H));
}

}  // namespace

#define TRE_STR_(x) #x
#define TRE_STR(x) TRE_STR_(x)

int main(int argc, char** argv) {
  const char* capability = TRE_STR(TRE_CPU_CAPABILITY);
#if defined(__AVX512F__)
  if (!torch_rnn_ext::kernels::cpu_runs_avx512_kernels()) {
    std::fprintf(stderr, "bench_cell_math: this CPU has no AVX-512 (F, VL, BW, DQ); run bench_cell_math\n");
    return 1;
  }
#endif
  std::printf("gate math compiled for %s\n", capability);
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const int64_t shapes[][2] = {{8, 128}, {32, 256}, {64, 512}};  // the benchmark's batched regimes
  for (const auto& s : shapes) {
    const int reps = scale * static_cast<int>(std::max<int64_t>(20, 4000000 / (s[0] * s[1] * 4)));
    report<CellKind::LSTM>("LSTM", s[0], s[1], reps);
    report<CellKind::GRU>("GRU", s[0], s[1], reps);
    report<CellKind::RNN_TANH>("RNN_TANH", s[0], s[1], reps);
  }
  return 0;
}
