// The vectorisable float exp / sigmoid / tanh / log / log1p / softplus, and double exp / sigmoid / tanh,
// against the standard library over their whole range.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/vec_math.h"

namespace {

using namespace torch_rnn_ext::kernels;

TEST(VecMath, ExpRelativeErrorBelowThreeUlp) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {  // the unclamped range
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(fast_exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 3 * 1.2e-7);
}

TEST(VecMath, ExpOutsideFloatRangeIsZeroOrInfinityNeverGarbage) {
  // beyond float's range: exactly what exp gives (0, inf), also for the infinities
  EXPECT_EQ(fast_exp(-1000.0f), 0.0f);
  EXPECT_EQ(fast_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(fast_exp(1000.0f), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fast_exp(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<float>::quiet_NaN())));
  // between e^88 and float's largest value it saturates at e^88, finite
  EXPECT_TRUE(std::isfinite(fast_exp(88.5f)));
  EXPECT_GT(fast_exp(88.5f), 1e38f);
  // the two-pass form agrees
  for (float x : {-1000.0f, -87.4f, -20.0f, 0.0f, 50.0f, 88.5f, 1000.0f})
    EXPECT_EQ(fast_exp_clamped(exp_clamp(x)), fast_exp(x)) << x;
}

TEST(VecMath, TanhAndSigmoidAbsoluteErrorBelow4e7) {
  double worst_tanh = 0, worst_sig = 0;
  for (float x = -30.0f; x <= 30.0f; x += 0.000913f) {
    worst_tanh = std::max(worst_tanh, std::abs(fast_tanh(x) - std::tanh(static_cast<double>(x))));
    worst_sig = std::max(worst_sig, std::abs(fast_sigmoid(x) - 1.0 / (1.0 + std::exp(-static_cast<double>(x)))));
  }
  EXPECT_LT(worst_tanh, 4e-7);
  EXPECT_LT(worst_sig, 2e-7);
  EXPECT_LT(std::abs(fast_tanh(1e-6f) - 1e-6f), 1e-12f);  // odd rational: full relative accuracy near 0
  EXPECT_EQ(fast_tanh(0.0f), 0.0f);
  EXPECT_EQ(fast_tanh(-100.0f), -1.0f);
  EXPECT_EQ(fast_tanh(100.0f), 1.0f);
}

TEST(VecMath, LogAndLog1pRelativeErrorBelowFiveUlp) {
  double worst_log = 0, worst_log1p = 0;
  for (float x = 1e-30f; x < 1e30f; x *= 1.000731f)
    worst_log = std::max(worst_log, std::abs(fast_log(x) - std::log(static_cast<double>(x))) /
                                        std::max(1e-30, std::abs(std::log(static_cast<double>(x)))));
  for (float x = -0.999f; x <= 100.0f; x += 0.000377f) {
    const double ref = std::log1p(static_cast<double>(x));
    if (ref != 0) worst_log1p = std::max(worst_log1p, std::abs(fast_log1p(x) - ref) / std::abs(ref));
  }
  for (float x = 1e-30f; x < 1e-2f; x *= 1.00173f) {  // tiny x: log1p(x) ~ x, where log(1 + x) fails
    const double ref = std::log1p(static_cast<double>(x));
    worst_log1p = std::max(worst_log1p, std::abs(fast_log1p(x) - ref) / ref);
  }
  EXPECT_LT(worst_log, 5 * 1.2e-7);
  EXPECT_LT(worst_log1p, 5 * 1.2e-7);
  EXPECT_EQ(fast_log(1.0f), 0.0f);
  EXPECT_EQ(fast_log1p(0.0f), 0.0f);
}

TEST(VecMath, SoftplusRelativeErrorBelowSixUlpAndLinearAbove20) {
  double worst = 0;
  for (float x = -80.0f; x <= 30.0f; x += 0.000613f) {
    const double xd = x, ref = xd > 30 ? xd : std::log1p(std::exp(xd));
    worst = std::max(worst, std::abs(fast_softplus(x) - ref) / ref);
  }
  EXPECT_LT(worst, 6 * 1.2e-7);
  EXPECT_EQ(fast_softplus(20.5f), 20.5f);
  EXPECT_EQ(fast_softplus(1e30f), 1e30f);
  EXPECT_GE(fast_softplus(-1000.0f), 0.0f);
  EXPECT_LT(fast_softplus(-1000.0f), 1e-37f);
}

TEST(VecMath, DoubleExpWithinTwoUlpOverDoublesRange) {
  double worst = 0;
  for (double x = -708.0; x <= 709.7; x += 0.0123456789) {
    const double ref = std::exp(x);
    worst = std::max(worst, std::abs(fast_exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2 * 2.3e-16);
  for (double x : {-1e-300, 0.0, 1e-17, -1e-10, 0.5 * std::log(2.0), 1.0})
    EXPECT_NEAR(fast_exp(x), std::exp(x), 2.3e-16 * std::exp(x)) << x;
  // denormal results as libm gives them (to the last bits), then 0; inf above the range; NaN stays NaN
  for (double x : {-709.0, -720.0, -740.0, -745.0})
    EXPECT_NEAR(fast_exp(x), std::exp(x), 1e-3 * std::exp(x) + 1e-323) << x;
  EXPECT_EQ(fast_exp(-746.0), 0.0);
  EXPECT_EQ(fast_exp(-std::numeric_limits<double>::infinity()), 0.0);
  EXPECT_EQ(fast_exp(709.8), std::numeric_limits<double>::infinity());
  EXPECT_EQ(fast_exp(std::numeric_limits<double>::infinity()), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(fast_exp(709.7)));
}

TEST(VecMath, DoubleTanhAndSigmoidWithinFewUlp) {
  double worst_tanh = 0, worst_sig = 0;
  for (double x = -40.0; x <= 40.0; x += 0.000731) {
    worst_tanh = std::max(worst_tanh, std::abs(fast_tanh(x) - std::tanh(x)) / std::max(std::abs(std::tanh(x)), 1e-300));
    const double sig = 1.0 / (1.0 + std::exp(-x));
    worst_sig = std::max(worst_sig, std::abs(sigmoid_(x) - sig) / sig);
  }
  EXPECT_LT(worst_tanh, 4 * 2.3e-16);
  EXPECT_LT(worst_sig, 4 * 2.3e-16);
  for (double x : {1e-300, -1e-20, 1e-8, 0.6249, 0.6251, -0.625})
    EXPECT_NEAR(fast_tanh(x), std::tanh(x), 4 * 2.3e-16 * std::abs(std::tanh(x))) << x;
  EXPECT_EQ(fast_tanh(0.0), 0.0);
  EXPECT_EQ(fast_tanh(1000.0), 1.0);
  EXPECT_EQ(fast_tanh(-std::numeric_limits<double>::infinity()), -1.0);
  EXPECT_TRUE(std::isnan(fast_tanh(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_EQ(sigmoid_(-1000.0), 0.0);
  EXPECT_EQ(sigmoid_(1000.0), 1.0);
}

}  // namespace
