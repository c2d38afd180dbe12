#pragma once
// exp, sigmoid and tanh written with arithmetic and bit operations only, so that the compiler vectorises
// the loops that call them (libm calls block vectorisation). float: Cephes' polynomial for exp (max
// relative error ~2 ulp), a rational function for tanh and sigmoid (abs. error < 3e-7). double: Cephes'
// exp and tanh (a few ulp: float64 accuracy); log, log1p and softplus stay libm's.
//
// Included by capability-specific translation units, so everything here lives in the capability
// namespace TRE_CPU_CAPABILITY (see recurrence.h).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef TRE_CPU_CAPABILITY
#define TRE_CPU_CAPABILITY base
#endif

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

inline uint32_t as_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
inline float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// The range fast_exp clamps its argument to, [-87.3, 88]: between 88 and float's overflow (88.72) it
// saturates at e^88, finite. Below -87.3 and above 88.72 the clamp leaves markers (-88, 89) which
// fast_exp_clamped turns into exactly 0 and inf, as exp(-inf) and exp(inf) are (e^x below -87.3 is a
// float denormal: flushed to 0). A NaN stays NaN.
inline float exp_clamp(float x) {
  x = x < -87.3f ? -88.0f : x;
  x = x > 88.0f && x <= 88.72f ? 88.0f : x;
  return x > 88.72f ? 89.0f : x;
}

// The core of fast_exp on x in the clamped range, for float or a GCC vector of float (the same operations
// lane by lane): n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for precision), returns e^r from
// Cephes' polynomial and fx = x / ln 2 + kExpShift: adding 1.5 * 2^23 rounds to an integer, which is then
// fx - kExpShift and the low bits of fx (no conversions, no floor correction).
constexpr float kExpShift = 12582912.0f;
template <typename V>
inline V exp_core(V x, V* fx) {
  *fx = x * 1.44269504088896341f + kExpShift;
  const V fn = *fx - kExpShift;
  const V r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  const V z = r * r;
  V y = V{} + 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  return y * z + r + 1.0f;
}

// fast_exp of an x already clamped (exp_clamp). Loops that clamp in a pass of their own use it: GCC
// copies the clamp's compares and blends into the code after it when both are in one loop.
inline float fast_exp_clamped(float x) {
  float fx;
  const float y = exp_core(x, &fx);
  // n in unsigned arithmetic: for a NaN x it is any bit pattern, and the shift below must not overflow.
  const uint32_t n = as_bits(fx) - as_bits(kExpShift);
  const uint32_t bits = (n + 127u) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = y * scale;
  // exp_clamp's markers: 0 below the float range, inf above it
  return x < -87.5f ? 0.0f : (x > 88.5f ? std::numeric_limits<float>::infinity() : e);
}

inline float fast_exp(float x) { return fast_exp_clamped(exp_clamp(x)); }

#if defined(__AVX2__)
// fast_exp on a GCC vector V of float (U: the vector of uint32_t of its size) in the AVX2 and AVX-512
// builds: the same arithmetic lane by lane, so the same bits, written on vectors for loops the compiler
// would not vectorise so (the scan's decode step). The clamp is folded into the final selects: below -87.3
// the result is 0 and above 88.72 inf, as exp_clamp's markers make it; in (88, 88.72] e^88. A NaN stays
// NaN. With AVX-512, 2^n is applied by vscalefps, which rounds y 2^n once as the multiply does (n is in
// [-126, 127] wherever the result is kept).
template <typename V, typename U>
inline V fast_exp_vec(V x) {
  const V zero = {};
  V xc;
  // min(88, x) with the operands in this order gives x where x is NaN
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    xc = reinterpret_cast<V>(_mm512_maskz_min_ps(0xffff, _mm512_set1_ps(88.0f), reinterpret_cast<__m512>(x)));
  } else
#endif
  {
    static_assert(sizeof(V) == 32 || sizeof(V) == 64, "fast_exp_vec takes 32- or 64-byte vectors");
    xc = reinterpret_cast<V>(_mm256_min_ps(_mm256_set1_ps(88.0f), reinterpret_cast<__m256>(x)));
  }
  V fx;
  const V y = exp_core(xc, &fx);
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    const V fn = fx - kExpShift;  // n, as exp_core has it
    const __m512 xv = reinterpret_cast<__m512>(x);
    const __mmask16 kept = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);  // NaN kept
    const __m512 e = _mm512_maskz_scalef_ps(kept, reinterpret_cast<__m512>(y), reinterpret_cast<__m512>(fn));
    const __mmask16 over = _mm512_cmp_ps_mask(xv, _mm512_set1_ps(88.72f), _CMP_GT_OQ);
    return reinterpret_cast<V>(_mm512_mask_mov_ps(e, over, _mm512_set1_ps(std::numeric_limits<float>::infinity())));
  }
#endif
  const U n = reinterpret_cast<U>(fx) - as_bits(kExpShift);
  const V e = y * reinterpret_cast<V>((n + 127u) << 23);
  return x < -87.3f ? zero : (x > 88.72f ? zero + std::numeric_limits<float>::infinity() : e);
}
#endif

// tanh as the odd rational minimax p(x)/q(x) of degrees 13/6 used by Eigen (and XLA, MLAS), on x clamped
// to +-7.90531 where float tanh rounds to +-1: abs. error < 3e-7, no exp, one division, exact 0 at 0.
inline float fast_tanh(float x) {
  x = x < -7.90531110763549805f ? -7.90531110763549805f : (x > 7.90531110763549805f ? 7.90531110763549805f : x);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

// sigmoid(x) = (1 + tanh(x / 2)) / 2: abs. error < 1.5e-7.
inline float fast_sigmoid(float x) { return 0.5f * fast_tanh(0.5f * x) + 0.5f; }

inline float exp_(float x) { return fast_exp(x); }
inline float sigmoid_(float x) { return fast_sigmoid(x); }
inline float tanh_(float x) { return fast_tanh(x); }

inline uint64_t as_bits(double x) {
  uint64_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
inline double from_bits(uint64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// 2^n for a float fn holding an integer n in [-1022, 1023]: exponent bits in unsigned arithmetic (vectorises
// without 64-bit arithmetic shifts, which AVX2 lacks). fn + 1.5 * 2^52 keeps n in its low bits.
inline double pow2_of(double fn) {
  constexpr double kShift = 6755399441055744.0;
  return from_bits((as_bits(fn + kShift) - as_bits(kShift) + 1023u) << 52);
}

// e^x in double: Cephes' exp (x = n ln 2 + r, e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)), max relative error
// ~1 ulp), 2^n applied as two exact factors so that results from the largest double down through the
// denormals come out (libm's range: inf above 709.78, 0 below -745.13). NaN stays NaN.
inline double fast_exp(double x) {
  x = x < -746.0 ? -746.0 : (x > 710.0 ? 710.0 : x);
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double fn = (x * 1.4426950408889634074 + kShift) - kShift;
  const double r = (x - fn * 6.93145751953125e-1) - fn * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * (p / (q - p));
  const double half = ((fn * 0.5 + kShift) - kShift);  // n split in two halves, each within the exponent range
  return e * pow2_of(half) * pow2_of(fn - half);
}

// tanh in double: Cephes' rational x + x^3 P(x^2) / Q(x^2) for |x| <= 0.625, 1 - 2 / (e^{2|x|} + 1) above
// (no cancellation there); max relative error ~2 ulp.
inline double fast_tanh(double x) {
  const double z = std::fabs(x), s = x * x;
  const double p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3;
  const double q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3;
  const double small = x + x * s * (p / q);
  const double big = 1.0 - 2.0 / (fast_exp(2.0 * z) + 1.0);
  const double t = z > 0.625 ? big : small;
  return z > 0.625 && x < 0 ? -t : t;
}

inline double exp_(double x) { return fast_exp(x); }
// exp_(x) == exp_clamped_(exp_clamp_(x)), for loops that clamp in a separate pass.
inline float exp_clamp_(float x) { return exp_clamp(x); }
inline float exp_clamped_(float x) { return fast_exp_clamped(x); }
inline double exp_clamp_(double x) { return x; }
inline double exp_clamped_(double x) { return fast_exp(x); }
inline double sigmoid_(double x) { return 1.0 / (1.0 + fast_exp(-x)); }
inline double tanh_(double x) { return fast_tanh(x); }

// ---- log, log1p and softplus (float: branch-free, so loops over them vectorise; double: libm).

// log(x) for finite x > 0 (normal numbers): Cephes logf, x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log(m) from a degree-9 polynomial in m - 1. Max relative error ~2 ulp (abs. error < 1e-7 near x = 1).
inline float fast_log(float x) {
  const uint32_t bx = as_bits(x);
  int32_t e = static_cast<int32_t>(bx >> 23) - 127;
  float m = from_bits((bx & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const uint32_t big = 0u - static_cast<uint32_t>(m > 1.41421356237f);  // then m / 2, e + 1 (bit blend)
  m = from_bits(as_bits(m) - (big & 0x00800000u));
  e += static_cast<int32_t>(big & 1u);
  const float f = m - 1.0f, f2 = f * f, fe = static_cast<float>(e);
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * f2 + fe * -2.12194440e-4f - 0.5f * f2;
  return f + y + fe * 0.693359375f;
}

// log(1 + x) for x > -1 with full relative accuracy near 0: log(u) x / (u - 1) with u = 1 + x (the
// rounding of u cancels), and x itself where u rounds to 1. Max relative error ~4 ulp.
inline float fast_log1p(float x) {
  const float u = 1.0f + x;
  const float r = fast_log(u) * (x / (u - 1.0f));  // NaN when u == 1: not chosen below
  const uint32_t one = 0u - static_cast<uint32_t>(u == 1.0f);
  return from_bits((as_bits(x) & one) | (as_bits(r) & ~one));
}

// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|): relative error ~4 ulp; equals x for x > 17
// (as torch's softplus with threshold 20 does above 20).
inline float fast_softplus(float x) {
  const uint32_t bx = as_bits(x);
  const float pos = from_bits(bx & ~static_cast<uint32_t>(static_cast<int32_t>(bx) >> 31));  // max(x, 0)
  return pos + fast_log1p(fast_exp(from_bits(bx | 0x80000000u)));  // e^-|x|
}

inline float log_(float x) { return fast_log(x); }
inline float log1p_(float x) { return fast_log1p(x); }
inline float softplus_(float x) { return fast_softplus(x); }
inline double log_(double x) { return std::log(x); }
inline double log1p_(double x) { return std::log1p(x); }
// torch.nn.functional.softplus with beta 1 and threshold 20.
inline double softplus_(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
