// Deploying from C++ on torch 2.x: loads an AOTInductor package (model.pt2, compiled by
// examples/cpp/make_aoti_model.py from a torch.export program with a dynamic sequence length) and runs it
// on inputs of two lengths, checking the outputs against Python's. The package's calls of our ops go
// through the dispatcher, so this program links libtorch_rnn_ext.so (with --no-as-needed), as any program
// running such a package must.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <iostream>
#include <string>
#include <vector>

#include "compare.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " DIR (written by examples/cpp/make_aoti_model.py)\n";
    return 2;
  }
  const std::string dir = argv[1];
  if (!c10::Dispatcher::singleton().findSchema({"torch_rnn_ext::lstm_layer", ""}).has_value()) {
    std::cerr << "FAIL: torch_rnn_ext ops are not registered: link libtorch_rnn_ext.so with --no-as-needed\n";
    return 1;
  }
  try {
    torch::jit::Module data = torch::jit::load(dir + "/data.pt");
    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    bool ok = true;
    for (const std::string name : {"a", "b"}) {
      const at::Tensor input = data.attr("input_" + name).toTensor();
      const std::vector<at::Tensor> out = loader.run({input});
      if (out.size() != 2) {
        std::cerr << "FAIL: expected 2 outputs, got " << out.size() << "\n";
        return 1;
      }
      const std::string length = "length " + std::to_string(input.size(1));
      ok &= check_output("output (" + length + ")", out[0], data.attr("output_" + name).toTensor(), false);
      ok &= check_output("h_n (" + length + ")", out[1], data.attr("h_n_" + name).toTensor(), false);
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "FAIL: " << e.what() << "\n";
    return 1;
  }
}
