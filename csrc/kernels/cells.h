#pragma once
// Pointwise math of each recurrent cell for one batch row, in torch.nn's gate order and formulas.
// Used by the time loop in recurrence.h. Pure C++ on raw pointers.
#include <cmath>
#include <cstdint>

namespace torch_rnn_ext {
namespace kernels {

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// LSTM, gates (i, f, g, o):
//   i = s(gi_i + gh_i), f = s(gi_f + gh_f), g = tanh(gi_g + gh_g), o = s(gi_o + gh_o)
//   c' = f c + i g,  h' = o tanh(c')
// Saved per row: i, f, g, o, c' (5H).
struct LSTMCell {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 5;
  static constexpr bool kHasCell = true;
  static constexpr bool kDirectDh = false;
  static constexpr bool kSameGateGrads = true;

  template <typename T>
  static void forward(int64_t H, const T* gi, const T* gh, const T* b_hh, T* h, T* c, T* out, T* saved) {
    for (int64_t j = 0; j < H; ++j) {
      T pi = gi[j] + gh[j], pf = gi[H + j] + gh[H + j], pg = gi[2 * H + j] + gh[2 * H + j],
        po = gi[3 * H + j] + gh[3 * H + j];
      if (b_hh) {
        pi += b_hh[j];
        pf += b_hh[H + j];
        pg += b_hh[2 * H + j];
        po += b_hh[3 * H + j];
      }
      const T i = sigmoid(pi), f = sigmoid(pf), g = std::tanh(pg), o = sigmoid(po);
      const T cn = f * c[j] + i * g;
      const T hn = o * std::tanh(cn);
      c[j] = cn;
      h[j] = hn;
      out[j] = hn;
      if (saved) {
        saved[j] = i;
        saved[H + j] = f;
        saved[2 * H + j] = g;
        saved[3 * H + j] = o;
        saved[4 * H + j] = cn;
      }
    }
  }

  // dh: total gradient of h' on entry (the direct part of dh_{t-1} is zero for LSTM: left untouched).
  // dc: gradient of c' on entry, of c_{t-1} on exit. c_{t-1} comes from the previous row's saved c', or
  // from c_init when this row starts here.
  template <typename T>
  static void backward(int64_t H, const T* saved, const T* /*h_new*/, const T* /*h_prev*/,
                       const T* prev_saved, const T* c_init, T* dh, T* dc, T* dgi, T* /*dgh*/) {
    const T* c_prev = prev_saved ? prev_saved + 4 * H : c_init;
    for (int64_t j = 0; j < H; ++j) {
      const T i = saved[j], f = saved[H + j], g = saved[2 * H + j], o = saved[3 * H + j],
              cn = saved[4 * H + j];
      const T tc = std::tanh(cn);
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

}  // namespace kernels
}  // namespace torch_rnn_ext
