// The gate math of each cell alone, on data in cache: the pointwise part of a time step with no product
// and no memory traffic beyond L2, as the AVX2 time loops compile it (this file gets the same flags as
// recurrence_avx2.cpp). It tells how much of a layer's time over its products' (the benchmark's bound)
// is arithmetic. Usage: bench_cell_math [repeats_scale]; prints us per step and ns per hidden unit.
#define TRE_CPU_CAPABILITY avx2
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/cells.h"

namespace {

using torch_rnn_ext::kernels::CellKind;
using torch_rnn_ext::kernels::avx2::Cell;

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

int main(int argc, char** argv) {
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
