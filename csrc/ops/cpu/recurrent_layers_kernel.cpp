// CPU kernels of the recurrent layer ops: the shared layer template of recurrent_layer.h, per cell.
#include <torch/library.h>

#include "ops/cpu/recurrent_layer.h"
#include "ops/layer_kernels.h"

namespace torch_rnn_ext {
namespace cpu {
namespace {

template <kernels::CellKind K>
struct CpuLayer {
  template <typename... Args>
  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward(Args&&... args) {
    return layer_forward<K>(std::forward<Args>(args)...);
  }
  template <typename... Args>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(Args&&... args) {
    const std::vector<Tensor> g = layer_backward<K>(std::forward<Args>(args)...);
    return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  }
};

}  // namespace

// CPU only: Meta tensors (and torch.compile's fake tensors) go to ops/meta/recurrent_layers.cpp.
TORCH_LIBRARY_IMPL(torch_rnn_ext, CPU, m) {
  LayerKernels<CpuLayer>::register_all(m);
  m.impl("_layer_products", TORCH_FN(layer_products));
}

}  // namespace cpu
}  // namespace torch_rnn_ext
