// Peak memory of the process, measured: the CUDA caching allocator's peak on a GPU, the peak
// resident set size (VmHWM) on the CPU.
#pragma once

#include <torch/torch.h>

namespace lmtune {

// Peak memory so far in MiB: max allocated on `device` when it is a GPU, else the process's
// peak RSS.
double peak_memory_mb(torch::Device device);

// Starts measuring a new phase, such as training steps after a setup whose transients (a base
// read in fp32 before it is quantized) are gone: resets the GPU allocator's peak, or on the CPU
// the resident set's high-water mark (Linux's clear_refs). peak_memory_mb then gives the peak since
// this call.
void reset_peak_memory(torch::Device device);

}  // namespace lmtune
