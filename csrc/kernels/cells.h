#pragma once
// Pointwise math of each recurrent cell for one batch row, in torch.nn's gate order and formulas.
// Used by the time loop in recurrence_impl.h; compiled per CPU capability (namespace TRE_CPU_CAPABILITY),
// with loops written so the compiler vectorises them across hidden units.
#include <cstdint>

#include "kernels/cell_traits.h"
#include "kernels/vec_math.h"

namespace torch_rnn_ext {
namespace kernels {
inline namespace TRE_CPU_CAPABILITY {

template <CellKind K>
struct Cell;

// forward's gi is the row's input pre-activations x W_ih^T + b_ih; for LSTM and RNN the time loop has
// already accumulated the recurrent product h W_hh^T into it (one buffer read, no second pass over C in
// the product), gh is unused and b is b_hh; GRU gets b_hh + h W_hh^T separately in gh (r scales part of
// it), and b is unused.

// LSTM, gates (i, f, g, o):
//   i = s(gi_i + gh_i + b_i), f = s(...), g = tanh(...), o = s(...)
//   c' = f c + i g,  h' = o tanh(c')
// Saved per row: i, f, g, o, c' (5H).
template <>
struct Cell<CellKind::LSTM> : CellTraits<CellKind::LSTM> {
  template <bool kSave, typename T>
  static void forward(int64_t H, const T* __restrict gi, const T* /*gh*/, const T* __restrict b,
                      const T* /*h_prev*/, T* __restrict c, T* __restrict out, T* __restrict saved) {
    for (int64_t j = 0; j < H; ++j) {
      const T i = sigmoid_(gi[j] + b[j]);
      const T f = sigmoid_(gi[H + j] + b[H + j]);
      const T g = tanh_(gi[2 * H + j] + b[2 * H + j]);
      const T o = sigmoid_(gi[3 * H + j] + b[3 * H + j]);
      const T cn = f * c[j] + i * g;
      const T hn = o * tanh_(cn);
      c[j] = cn;
      out[j] = hn;
      if (kSave) {
        saved[j] = i;
        saved[H + j] = f;
        saved[2 * H + j] = g;
        saved[3 * H + j] = o;
        saved[4 * H + j] = cn;
      }
    }
  }

  // m = o * tanh(c'), the value a projection multiplies (recomputed from the saved row).
  template <typename T>
  static void projected(int64_t H, const T* __restrict saved, T* __restrict m) {
    for (int64_t j = 0; j < H; ++j) m[j] = saved[3 * H + j] * tanh_(saved[4 * H + j]);
  }

  // dh: total gradient of h' (LSTM leaves no direct part of dh_{t-1}: the product supplies it all).
  // dc: gradient of c' on entry, of c_{t-1} on exit. c_{t-1} is the previous row's saved c', or c_init
  // when the row starts here.
  template <typename T>
  static void backward(int64_t H, const T* __restrict saved, const T* /*h_new*/, const T* /*h_prev*/,
                       const T* prev_saved, const T* c_init, T* __restrict dh, T* __restrict dc,
                       T* __restrict dgi, T* /*dgh*/) {
    const T* __restrict c_prev = prev_saved ? prev_saved + 4 * H : c_init;
    for (int64_t j = 0; j < H; ++j) {
      const T i = saved[j], f = saved[H + j], g = saved[2 * H + j], o = saved[3 * H + j];
      const T tc = tanh_(saved[4 * H + j]);
      const T dhj = dh[j];
      const T dcj = dc[j] + dhj * o * (T(1) - tc * tc);
      dgi[j] = dcj * g * i * (T(1) - i);
      dgi[H + j] = dcj * c_prev[j] * f * (T(1) - f);
      dgi[2 * H + j] = dcj * i * (T(1) - g * g);
      dgi[3 * H + j] = dhj * tc * o * (T(1) - o);
      dc[j] = dcj * f;
    }
  }
};

// GRU, gates (r, z, n), torch.nn's formula (r multiplies W_hn h + b_hn):
//   r = s(gi_r + gh_r), z = s(gi_z + gh_z), a = gh_n, n = tanh(gi_n + r a),  h' = (1 - z) n + z h
// gi holds x W_ih^T + b_ih, gh holds b_hh + h W_hh^T. Saved per row: r, z, n, a (4H).
template <>
struct Cell<CellKind::GRU> : CellTraits<CellKind::GRU> {
  template <bool kSave, typename T>
  static void forward(int64_t H, const T* __restrict gi, const T* __restrict gh, const T* /*b*/,
                      const T* __restrict h_prev, T* /*c*/, T* __restrict out, T* __restrict saved) {
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigmoid_(gi[j] + gh[j]);
      const T z = sigmoid_(gi[H + j] + gh[H + j]);
      const T a = gh[2 * H + j];
      const T n = tanh_(gi[2 * H + j] + r * a);
      out[j] = (T(1) - z) * n + z * h_prev[j];
      if (kSave) {
        saved[j] = r;
        saved[H + j] = z;
        saved[2 * H + j] = n;
        saved[3 * H + j] = a;
      }
    }
  }

  // dh: total gradient of h' on entry; on exit its direct part dh z (the product adds dgh W_hh).
  template <typename T>
  static void backward(int64_t H, const T* __restrict saved, const T* /*h_new*/, const T* __restrict h_prev,
                       const T* /*prev_saved*/, const T* /*c_init*/, T* __restrict dh, T* /*dc*/,
                       T* __restrict dgi, T* __restrict dgh) {
    for (int64_t j = 0; j < H; ++j) {
      const T r = saved[j], z = saved[H + j], n = saved[2 * H + j], a = saved[3 * H + j];
      const T dhj = dh[j];
      const T dn = dhj * (T(1) - z) * (T(1) - n * n);
      const T dz = dhj * (h_prev[j] - n) * z * (T(1) - z);
      const T dr = dn * a * r * (T(1) - r);
      dgi[j] = dr;
      dgi[H + j] = dz;
      dgi[2 * H + j] = dn;
      dgh[j] = dr;
      dgh[H + j] = dz;
      dgh[2 * H + j] = dn * r;
      dh[j] = dhj * z;
    }
  }
};

// Vanilla RNN with tanh or relu: h' = act(gi + gh + b). gi and out may be the same row (the layer makes
// the input projection in its output): each element is read before it is written.
template <bool kTanh>
struct PlainRNNCell : PlainRNNTraits {
  template <bool kSave, typename T>
  static void forward(int64_t H, const T* gi, const T* /*gh*/, const T* __restrict b,
                      const T* /*h_prev*/, T* /*c*/, T* out, T* /*saved*/) {
    for (int64_t j = 0; j < H; ++j) {
      const T p = gi[j] + b[j];  // gi + gh + b, the recurrent product already in gi
      out[j] = kTanh ? tanh_(p) : (p < T(0) ? T(0) : p);  // relu keeps a NaN, as torch.relu does
    }
  }

  template <typename T>
  static void backward(int64_t H, const T* /*saved*/, const T* __restrict h_new, const T* /*h_prev*/,
                       const T* /*prev_saved*/, const T* /*c_init*/, T* __restrict dh, T* /*dc*/,
                       T* __restrict dgi, T* /*dgh*/) {
    for (int64_t j = 0; j < H; ++j) {
      const T y = h_new[j];
      dgi[j] = kTanh ? dh[j] * (T(1) - y * y) : (y <= T(0) ? T(0) : dh[j]);  // NaN passes dh, as in torch
    }
  }
};
template <>
struct Cell<CellKind::RNN_TANH> : PlainRNNCell<true> {};
template <>
struct Cell<CellKind::RNN_RELU> : PlainRNNCell<false> {};

}  // namespace TRE_CPU_CAPABILITY
}  // namespace kernels
}  // namespace torch_rnn_ext
