// The one path every linear layer of a model takes: y = x W^T + b under the run's precision (the
// CPU bf16 emulation included), plus an optional low-rank adapter (LoRA) and, for a frozen base,
// a weight held quantized. Adapters and quantized weights attach here and nowhere else.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "lmtune/model/quantize.h"

namespace lmtune {

// A linear projection with HF's parameter names: weight (out, in) and, optionally, bias (out).
// With an adapter: y = x W^T + b + scaling * dropout(x) A^T B^T, where A (r, in) and B (out, r)
// are the parameters lora_A and lora_B (fp32, whatever the base's dtype), as PEFT's LoRA layers.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in, int64_t out, bool bias);
  // x (..., in) -> (..., out)
  torch::Tensor forward(const torch::Tensor& x);
  // The same without the bias, for a caller that adds it fused with what follows (bias + GELU).
  torch::Tensor forward_without_bias(const torch::Tensor& x);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

  // Adds a rank-r adapter initialised as PEFT does (A Kaiming-uniform with a = sqrt(5), B zero, so
  // the layer's output is unchanged), on the weight's device. Replaces any adapter already there.
  void add_lora(int64_t r, double scaling, double dropout);
  bool has_lora() const { return lora_A.defined(); }
  double lora_scaling() const { return lora_scaling_; }
  // Folds the adapter into the weight (W += scaling * B A) and removes it. Not for a quantized
  // weight: merge into the base as stored (model/lora.h write_merged_model).
  void merge_lora();

  // Replaces the weight by its quantized form, frozen: registered buffers (so that to() moves
  // them), no weight parameter. The bias stays as it is.
  void quantize(QuantType type, bool double_quant);
  bool is_quantized() const { return quantized_.type != QuantType::kNone; }
  const QuantizedWeight& quantized_weight() const { return quantized_; }

  torch::Tensor weight;  // (out, in); undefined when quantized
  torch::Tensor bias;    // (out), or undefined
  torch::Tensor lora_A;  // (r, in), or undefined
  torch::Tensor lora_B;  // (out, r), or undefined

 private:
  // x W^T + `bias` (undefined: none), plus the adapter's term.
  torch::Tensor project(const torch::Tensor& x, const torch::Tensor& bias);

  int64_t in_, out_;
  double lora_scaling_ = 0;
  double lora_dropout_ = 0;
  QuantizedWeight quantized_;  // type kNone: the weight is the dense parameter
};
TORCH_MODULE(Projection);

// The names an adapter's parameters end with, as a Projection registers them.
inline constexpr const char* kLoraA = "lora_A";
inline constexpr const char* kLoraB = "lora_B";

// Whether a model parameter name (h.0.attn.c_attn.lora_A) is an adapter's rather than the base's.
bool is_adapter_parameter(const std::string& name);

}  // namespace lmtune
