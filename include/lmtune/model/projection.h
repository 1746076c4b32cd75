// The one path every linear layer of a model takes: y = x W^T + b under the run's precision (the
// CPU bf16 emulation included). Adapters and quantized weights attach here.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lmtune {

// A linear projection with HF's parameter names: weight (out, in) and, optionally, bias (out).
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in, int64_t out, bool bias);
  // x (..., in) -> (..., out)
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out), or undefined
};
TORCH_MODULE(Projection);

}  // namespace lmtune
