// Peak memory of the process, measured: the CUDA caching allocator's peak on a GPU, the peak
// resident set size (getrusage) on the CPU.
#pragma once

#include <torch/torch.h>

namespace lmtune {

// Peak memory so far in MiB: max allocated on `device` when it is a GPU, else the process's
// peak RSS.
double peak_memory_mb(torch::Device device);

}  // namespace lmtune
