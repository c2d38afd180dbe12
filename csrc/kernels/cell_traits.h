#pragma once
// What the ATen binding layer needs to know about each cell, independent of CPU capability.
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

enum class CellKind { LSTM, GRU, RNN_TANH, RNN_RELU };

// Calls X(kind, dtype) for every compiled combination (used to instantiate the kernels once each).
#define TRE_FOR_EACH_CELL_DTYPE(X) \
  X(CellKind::LSTM, float)         \
  X(CellKind::LSTM, double)

template <CellKind K>
struct CellTraits;

template <>
struct CellTraits<CellKind::LSTM> {
  static constexpr int kGates = 4;             // W_hh has kGates * H rows (i, f, g, o)
  static constexpr int kSaved = 5;             // values per hidden unit saved per row: i, f, g, o, c'
  static constexpr bool kHasCell = true;       // carries a cell state c
  static constexpr bool kDirectDh = false;     // dh_{t-1} has a term besides dgates_h @ W_hh
  static constexpr bool kSameGateGrads = true; // d(input pre-activation) == d(recurrent pre-activation)
};

}  // namespace kernels
}  // namespace torch_rnn_ext
