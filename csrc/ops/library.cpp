// The torch_rnn_ext operator library. Each op declares its schemas in its own file (ops/<op>.cpp) with
// TORCH_LIBRARY_FRAGMENT; this file opens the namespace once.
#include <torch/library.h>

TORCH_LIBRARY(torch_rnn_ext, m) {}
