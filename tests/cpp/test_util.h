#pragma once
// Helpers shared by the GoogleTest files.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace torch_rnn_ext_test {

// f() must raise a c10::Error whose message contains `needle` (the argument it names).
inline void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace torch_rnn_ext_test
