#pragma once
// What the ATen binding layer needs to know about each cell, independent of CPU capability.
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

enum class CellKind { LSTM, GRU, RNN_TANH, RNN_RELU };

// Calls X(kind, dtype) for every compiled combination (used to instantiate the kernels once each).
#define TRE_FOR_EACH_CELL_DTYPE(X)                                                            \
  X(CellKind::LSTM, float)                                                                  \
  X(CellKind::LSTM, double) X(CellKind::GRU, float) X(CellKind::GRU, double)                \
      X(CellKind::RNN_TANH, float) X(CellKind::RNN_TANH, double) X(CellKind::RNN_RELU, float) \
          X(CellKind::RNN_RELU, double)

template <CellKind K>
struct CellTraits;

template <>
struct CellTraits<CellKind::LSTM> {
  static constexpr int kGates = 4;             // W_hh has kGates * H rows (i, f, g, o)
  static constexpr int kSaved = 5;             // values per hidden unit saved per row: i, f, g, o, c'
  static constexpr bool kHasCell = true;       // carries a cell state c
  static constexpr bool kDirectDh = false;     // dh_{t-1} has a term besides dgates_h @ W_hh
  static constexpr bool kSameGateGrads = true; // d(input pre-activation) == d(recurrent pre-activation)
  static constexpr int kOwnGates = 0;          // trailing gate blocks where they differ
};

// GRU, gates (r, z, n): saved r, z, n and W_hn h + b_hn (4H); dh_{t-1} has the direct term dh z, and the
// recurrent pre-activation gradient of n differs from the input one (it is scaled by r): only that block
// is kept per row (kOwnGates), the rest of dgh is dgi's.
template <>
struct CellTraits<CellKind::GRU> {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
  static constexpr bool kHasCell = false;
  static constexpr bool kDirectDh = true;
  static constexpr bool kSameGateGrads = false;
  static constexpr int kOwnGates = 1;  // only n's recurrent gradient differs (scaled by r)
};

// Vanilla RNN: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh); the derivative comes from h' itself.
struct PlainRNNTraits {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 0;
  static constexpr bool kHasCell = false;
  static constexpr bool kDirectDh = false;
  static constexpr bool kSameGateGrads = true;
  static constexpr int kOwnGates = 0;
};
template <>
struct CellTraits<CellKind::RNN_TANH> : PlainRNNTraits {};
template <>
struct CellTraits<CellKind::RNN_RELU> : PlainRNNTraits {};

}  // namespace kernels
}  // namespace torch_rnn_ext
