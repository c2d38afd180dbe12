#pragma once
// exp, sigmoid and tanh written with arithmetic and bit operations only, so that the compiler vectorises
// the loops that call them (libm calls block vectorisation). float: Cephes' polynomials, max relative
// error ~2 ulp for exp; tanh via a polynomial near 0 and exp elsewhere (abs. error < 1e-7).
// double: the standard library, for full float64 accuracy.
//
// Included by capability-specific translation units, so everything here lives in the capability
// namespace TRE_CPU_CAPABILITY (see recurrence.h).
#include <cmath>
#include <cstdint>
#include <cstring>

#ifndef TRE_CPU_CAPABILITY
#define TRE_CPU_CAPABILITY base
#endif

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);  // saturates at e^88 (finite), ~0 below e^-87
  // n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for precision)
  const float fx = x * 1.44269504088896341f + 0.5f;
  int32_t n = static_cast<int32_t>(fx);
  n -= static_cast<int32_t>(fx < static_cast<float>(n));  // floor for negative fx
  const float fn = static_cast<float>(n);
  const float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t bits = (n + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

inline uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
inline float float_of(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// tanh(|x|) from an odd polynomial when |x| < 0.625 (Cephes tanhf), else (1 - e) / (1 + e) with
// e = exp(-2|x|); x's sign put back. The choice is a bitwise blend: a ?: here would stop vectorisation.
inline float fast_tanh(float x) {
  const uint32_t bx = bits_of(x), sign = bx & 0x80000000u;
  const float ax = float_of(bx & 0x7fffffffu);
  const float z = ax * ax;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * ax + ax;
  const float e = fast_exp(-2.0f * ax);
  const float big = (1.0f - e) / (1.0f + e);
  const uint32_t use_small = 0u - static_cast<uint32_t>(ax < 0.625f);
  return float_of(((bits_of(small) & use_small) | (bits_of(big) & ~use_small)) | sign);
}

inline float exp_(float x) { return fast_exp(x); }
inline float sigmoid_(float x) { return fast_sigmoid(x); }
inline float tanh_(float x) { return fast_tanh(x); }
inline double exp_(double x) { return std::exp(x); }
inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
