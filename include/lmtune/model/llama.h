// The Llama family (model_type llama, mistral, qwen2, qwen3): RMSNorm computed in fp32, a SwiGLU
// MLP, rotary position embeddings (HF's half-split convention, default, linear and llama3
// scaling), grouped-query attention, optional q/k/v/o and MLP biases, Qwen3's q/k RMSNorms, a tied
// or untied output head. Parameter names are HF's without the "model." prefix; the HF-file
// conversions (both config.json layouts, tensor names) are in llama_hf.cpp.
//
// Dimensions: B batch, T time, C hidden size, H query heads, K key/value heads, D head size,
// F MLP width, V vocabulary, L layers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/model/causal_lm.h"
#include "lmtune/model/projection.h"

namespace lmtune {

enum class RopeType { kDefault, kLinear, kLlama3 };

struct LlamaConfig {
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;  // attention window in effect; 0 = none (full causal attention)
  double rms_norm_eps = 1e-6;
  double attention_dropout = 0.0;
  double initializer_range = 0.02;
  // Rotary embeddings: base, and the scaling of the inverse frequencies.
  double rope_theta = 10000.0;
  RopeType rope_type = RopeType::kDefault;
  double rope_factor = 1.0;                         // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  bool qkv_bias = false;  // q, k and v projections (attention_bias; always for Qwen2)
  bool o_bias = false;    // output projection (attention_bias, except Qwen2)
  bool mlp_bias = false;
  bool qk_norm = false;  // RMSNorm over each head's q and k before the rotation (Qwen3)
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  // The config.json this was read from: written back on export, so keys lmtune does not use
  // (chat templates' token ids, architectures, ...) survive a fine-tune.
  nlohmann::json source = nlohmann::json::object();

  // Reads an HF config.json of either layout (transformers 4.x rope_theta/rope_scaling or 5.x
  // rope_parameters). Unsupported settings are InputError naming the file and key.
  static LlamaConfig from_hf_json(const nlohmann::json& hf, const std::string& file);
  nlohmann::json to_hf_json() const;
};

// RMSNorm, computed in fp32 whatever the input's dtype: x / rms(x) * weight.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., dim) -> (..., dim)
  double eps() const { return eps_; }

  torch::Tensor weight;  // (dim)

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config);
  // x (B, T, C), cos and signed sin (T, D) or (B, 1, T, D) of the rotation (see rotation())
  // -> (B, T, C).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        LayerCache cache);

  Projection q_proj{nullptr};  // C -> H * D
  Projection k_proj{nullptr};  // C -> K * D
  Projection v_proj{nullptr};  // C -> K * D
  Projection o_proj{nullptr};  // H * D -> C
  RMSNorm q_norm{nullptr};     // (D), Qwen3 only
  RMSNorm k_norm{nullptr};     // (D), Qwen3 only

 private:
  int64_t n_head_, n_kv_head_, head_dim_;
  double dropout_;
};
TORCH_MODULE(LlamaAttention);

class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

  Projection gate_proj{nullptr};  // C -> F
  Projection up_proj{nullptr};    // C -> F
  Projection down_proj{nullptr};  // F -> C
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& config);
  // `fused`: the residual add after attention and post_attention_layernorm as one operation
  // (model/fused_ops.h: a CUDA kernel on a GPU).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        LayerCache cache, bool fused = false);

  RMSNorm input_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  LlamaMLP mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// LlamaForCausalLM (and Mistral, Qwen2, Qwen3): embed_tokens.weight, layers.0.self_attn.q_proj...,
// norm.weight, lm_head.weight.
class LlamaImpl : public CausalLMImpl {
 public:
  explicit LlamaImpl(const LlamaConfig& config);
  // The spec a model of this config has, without building it.
  static ModelSpec spec_of(const LlamaConfig& config);

  torch::Tensor output_weight() const override;
  const ModelSpec& spec() const override { return spec_; }
  std::vector<torch::Tensor> embedding_parameters() const override {
    return {embed_tokens->weight};
  }
  std::string embedding_names() const override;
  std::shared_ptr<torch::nn::Module> block(int64_t index) override { return layers[index]; }
  const char* blocks_name() const override { return "layers"; }
  // HF's initialisation: N(0, initializer_range) for projections and embeddings, norms 1.
  void init_weights(uint64_t seed) override;
  nlohmann::json hf_config() const override { return config_.to_hf_json(); }
  NamedTensors hf_tensors() const override;
  std::vector<std::string> hf_names(const std::string& parameter) const override;
  bool ignorable_hf_tensor(const std::string& name) const override;

  torch::nn::Embedding embed_tokens{nullptr};  // (V, C)
  torch::nn::ModuleList layers{nullptr};       // L decoder layers
  RMSNorm norm{nullptr};
  Projection lm_head{nullptr};  // C -> V, only when embeddings are not tied

 protected:
  torch::Tensor embed(const torch::Tensor& idx, const TokenPositions& positions) override;
  torch::Tensor run_block(int64_t index, const torch::Tensor& x, const TokenPositions& positions,
                          LayerCache cache) override;
  torch::Tensor final_norm(const torch::Tensor& x) override { return norm(x); }

 private:
  // cos and signed sin of the rotation at `positions` of T tokens, in fp32 on `device`: (T, D)
  // for positions past .. past + T - 1, (B, 1, T, D) for per-row positions. The sine's first
  // half is negated, so that HF's x * cos + rotate_half(x) * sin is x * cos + roll(x) * sin.
  std::pair<torch::Tensor, torch::Tensor> rotation(const TokenPositions& positions, int64_t T,
                                                   torch::Device device);

  LlamaConfig config_;
  ModelSpec spec_;
  torch::Tensor inv_freq_;  // (D / 2), fp32 on the CPU
  // cos and signed sin (P, D) for the first P positions, on the device the model last ran on.
  std::pair<torch::Tensor, torch::Tensor> rotation_tables_;
};
TORCH_MODULE(Llama);

// The model_type values this family covers.
bool is_llama_family(const std::string& model_type);

}  // namespace lmtune
