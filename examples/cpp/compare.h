#pragma once
// Comparing a C++ result with Python's, for the deployment examples: prints "ok: ..." or "FAIL: ..." with the
// largest difference.
#include <ATen/ATen.h>

#include <iostream>
#include <string>

// Bitwise when exact, else within rtol 1e-5, atol 1e-6.
inline bool check_output(const std::string& what, const at::Tensor& got, const at::Tensor& expected, bool exact) {
  const bool same_kind = got.sizes() == expected.sizes() && got.scalar_type() == expected.scalar_type();
  if (same_kind && (exact ? at::equal(got, expected) : at::allclose(got, expected, 1e-5, 1e-6))) {
    std::cout << "ok: " << what << (exact ? " equals Python's output bitwise " : " matches Python's output ")
              << got.sizes() << "\n";
    return true;
  }
  std::cerr << "FAIL: " << what << ": got " << got.sizes() << " " << got.scalar_type() << ", expected "
            << expected.sizes() << " " << expected.scalar_type();
  if (got.sizes() == expected.sizes())
    std::cerr << ", max abs difference " << (got - expected).abs().max().item<double>();
  std::cerr << "\n";
  return false;
}
