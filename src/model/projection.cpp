#include "lmtune/model/projection.h"

#include "lmtune/model/bf16_emulation.h"

namespace lmtune {

ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool bias) {
  // torch::nn::Linear's default initialisation; every architecture re-initialises or loads.
  weight = register_parameter("weight", torch::empty({out, in}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    this->bias = register_parameter("bias", torch::empty({out}).uniform_(-bound, bound));
  }
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  return autocast_linear(x, weight, bias);
}

}  // namespace lmtune
