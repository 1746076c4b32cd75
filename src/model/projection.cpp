#include "lmtune/model/projection.h"

#include <cmath>

#include "lmtune/model/bf16_emulation.h"

namespace lmtune {

ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool bias) : in_(in), out_(out) {
  // torch::nn::Linear's default initialisation; every architecture re-initialises or loads.
  weight = register_parameter("weight", torch::empty({out, in}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    this->bias = register_parameter("bias", torch::empty({out}).uniform_(-bound, bound));
  }
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  return project(x, bias);
}

torch::Tensor ProjectionImpl::forward_without_bias(const torch::Tensor& x) {
  return project(x, torch::Tensor());
}

torch::Tensor ProjectionImpl::project(const torch::Tensor& x, const torch::Tensor& bias) {
  torch::Tensor y = is_quantized() ? quantized_linear(x, quantized_, bias)
                                   : autocast_linear(x, weight, bias);  // (..., out)
  if (!has_lora()) return y;
  torch::Tensor h = lora_dropout_ > 0 ? torch::dropout(x, lora_dropout_, is_training()) : x;
  torch::Tensor low = autocast_linear(h, lora_A);  // (..., r)
  return y + autocast_linear(low, lora_B) * lora_scaling_;
}

void ProjectionImpl::add_lora(int64_t r, double scaling, double dropout) {
  TORCH_CHECK(r > 0, "LoRA rank must be positive, got ", r);
  const torch::Device device = is_quantized() ? quantized_.codes.device() : weight.device();
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  torch::Tensor a = torch::empty({r, in_}, options);
  torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
  if (has_lora()) {
    lora_A.set_data(a);
    lora_B.set_data(torch::zeros({out_, r}, options));
  } else {
    lora_A = register_parameter(kLoraA, a);
    lora_B = register_parameter(kLoraB, torch::zeros({out_, r}, options));
  }
  lora_scaling_ = scaling;
  lora_dropout_ = dropout;
}

void ProjectionImpl::merge_lora() {
  if (!has_lora()) return;
  TORCH_CHECK(!is_quantized(), "an adapter cannot be merged into a quantized weight");
  {
    torch::NoGradGuard no_grad;
    weight.add_(torch::matmul(lora_B, lora_A).to(weight.dtype()), lora_scaling_);  // (out, in)
  }
  parameters_.erase(kLoraA);
  parameters_.erase(kLoraB);
  lora_A = lora_B = torch::Tensor();
  lora_scaling_ = lora_dropout_ = 0;
}

void ProjectionImpl::quantize(QuantType type, bool double_quant) {
  TORCH_CHECK(!is_quantized() && type != QuantType::kNone, "quantize once, to int8 or nf4");
  quantized_ = quantize_weight(weight.detach(), type, double_quant);
  parameters_.erase("weight");
  weight = torch::Tensor();
  for (auto [name, tensor] :
       {std::pair<const char*, torch::Tensor*>{"weight_codes", &quantized_.codes},
        {"weight_absmax", &quantized_.absmax},
        {"weight_absmax_codes", &quantized_.absmax_codes},
        {"weight_absmax_absmax", &quantized_.absmax_absmax},
        {"weight_absmax_offset", &quantized_.absmax_offset}})
    if (tensor->defined()) *tensor = register_buffer(name, *tensor);
}

bool is_adapter_parameter(const std::string& name) {
  const std::string_view leaf = std::string_view(name).substr(name.rfind('.') + 1);
  return leaf == kLoraA || leaf == kLoraB;
}

}  // namespace lmtune
