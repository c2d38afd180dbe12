// Deploying a torch_rnn_ext model from C++: loads the TorchScript models that make_model.py saved from
// Python, runs them on the saved input and checks that the outputs equal, bit for bit, those Python
// recorded. Also takes one training step in C++, since the ops' backward is C++ autograd too.
//
// The program is linked with the op library (CMake: -Wl,--no-as-needed torch_rnn_ext -Wl,--as-needed):
// nothing here calls into it, its static initialisers register the ops, and without them torch::jit::load
// fails with "Unknown builtin op: torch_rnn_ext::...".
//
// Usage: deploy_model DIR   (DIR holds model.pt, trained.pt and data.pt from make_model.py)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <iostream>
#include <string>

#include "compare.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " DIR (written by examples/cpp/make_model.py)\n";
    return 2;
  }
  const std::string dir = argv[1];
  // The link-time guarantee, checked: the op library registered its ops in this process.
  if (!c10::Dispatcher::singleton().findSchema({"torch_rnn_ext::lstm", ""}).has_value()) {
    std::cerr << "FAIL: torch_rnn_ext ops are not registered: link libtorch_rnn_ext.so with --no-as-needed\n";
    return 1;
  }
  try {
    torch::jit::Module data = torch::jit::load(dir + "/data.pt");
    const at::Tensor input = data.attr("input").toTensor();
    bool ok = true;

    // Inference, as deployed: eval mode, no autograd recording.
    torch::jit::Module model = torch::jit::load(dir + "/model.pt");
    model.eval();
    {
      torch::NoGradGuard no_grad;
      ok &= check_output("model.pt (eval, NoGradGuard)", model.forward({input}).toTensor(),
                        data.attr("expected").toTensor(), true);
    }

    // The trained model, still in training mode, run under NoGradGuard (the ops' non-saving path) against
    // the output Python recorded with autograd on (the saving path).
    torch::jit::Module trained = torch::jit::load(dir + "/trained.pt");
    {
      torch::NoGradGuard no_grad;
      ok &= check_output("trained.pt (train mode, NoGradGuard)", trained.forward({input}).toTensor(),
                        data.attr("expected_trained").toTensor(), true);
    }

    // One SGD step in C++: every parameter gets a finite gradient through the ops' C++ backward, and the
    // loss goes down.
    std::vector<at::Tensor> params;
    for (const at::Tensor& p : trained.parameters()) params.push_back(p);
    torch::optim::SGD sgd(params, torch::optim::SGDOptions(0.05));
    const at::Tensor target = torch::zeros_like(data.attr("expected_trained").toTensor());
    auto loss_of = [&] { return torch::mse_loss(trained.forward({input}).toTensor(), target); };
    sgd.zero_grad();
    at::Tensor loss = loss_of();
    loss.backward();
    size_t with_grad = 0;
    for (const at::Tensor& p : params) {
      if (p.grad().defined() && torch::isfinite(p.grad()).all().item<bool>()) ++with_grad;
    }
    sgd.step();
    const double before = loss.item<double>(), after = loss_of().item<double>();
    if (with_grad == params.size() && after < before) {
      std::cout << "ok: C++ training step: " << with_grad << " parameters with gradients, loss " << before << " -> "
                << after << "\n";
    } else {
      std::cerr << "FAIL: C++ training step: " << with_grad << " of " << params.size()
                << " parameters with finite gradients, loss " << before << " -> " << after << "\n";
      ok = false;
    }
    return ok ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "FAIL: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
