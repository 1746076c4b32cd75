// GPT-2: its Hugging Face config and the LibTorch module (parameter names are HF's). The HF-file
// conversions (Conv1D transposes, the "transformer." prefix) are in gpt2_hf.cpp.
//
// Dimensions: B batch, T time (tokens), C channels (n_embd), H heads, D head size (C / H),
// V vocabulary, L layers, P positions.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/model/causal_lm.h"
#include "lmtune/model/projection.h"

namespace lmtune {

class Tokenizer;

enum class Activation { kGeluTanh, kGelu, kRelu };

struct GPT2Config {
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  int64_t n_positions = 1024;
  int64_t vocab_size = 50257;
  int64_t n_inner = 0;                            // MLP width; 0 = 4 * n_embd
  Activation activation = Activation::kGeluTanh;  // HF "gelu_new"
  double layer_norm_epsilon = 1e-5;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double resid_pdrop = 0.1;
  bool tie_word_embeddings = true;
  int64_t bos_token_id = 50256;
  int64_t eos_token_id = 50256;

  int64_t mlp_width() const { return n_inner > 0 ? n_inner : 4 * n_embd; }

  // Reads an HF GPT-2 config.json; unknown keys are ignored, missing required ones are an
  // InputError naming the file and key.
  static GPT2Config from_hf_json(const nlohmann::json& hf, const std::string& file);
  nlohmann::json to_hf_json() const;
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const GPT2Config& config);
  // x (B, T, C) -> (B, T, C). With a cache slot, attends to it and appends this step's keys and
  // values.
  torch::Tensor forward(const torch::Tensor& x, LayerCache cache = {});

  Projection c_attn{nullptr};  // C -> 3C (q, k, v)
  Projection c_proj{nullptr};  // C -> C

 private:
  int64_t n_head_;
  double attn_pdrop_;
  torch::nn::Dropout resid_dropout_{nullptr};
};
TORCH_MODULE(CausalSelfAttention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const GPT2Config& config);
  // (B, T, C) -> (B, T, C); `fused`: c_fc's bias and the GELU as one operation (fused_ops.h)
  torch::Tensor forward(const torch::Tensor& x, bool fused = false);

  Projection c_fc{nullptr};    // C -> 4C
  Projection c_proj{nullptr};  // 4C -> C

 private:
  Activation activation_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(MLP);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const GPT2Config& config);
  // `fused`: the residual add before ln_2 and ln_2 itself, and the MLP's bias + GELU, through
  // model/fused_ops.h (CUDA kernels on a GPU).
  torch::Tensor forward(const torch::Tensor& x, LayerCache cache = {}, bool fused = false);

  torch::nn::LayerNorm ln_1{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(Block);

// GPT2LMHeadModel. Parameter names are HF's without the "transformer." prefix: wte.weight,
// h.0.attn.c_attn.weight, ... Projection weights are stored (out, in); HF's Conv1D stores (in, out)
// (gpt2_hf.cpp converts).
class GPT2Impl : public CausalLMImpl {
 public:
  explicit GPT2Impl(const GPT2Config& config);
  // The spec a model of this config has, without building it.
  static ModelSpec spec_of(const GPT2Config& config);

  torch::Tensor output_weight() const override;  // wte for tied embeddings, lm_head otherwise
  const ModelSpec& spec() const override { return spec_; }
  std::vector<torch::Tensor> embedding_parameters() const override;
  std::string embedding_names() const override;
  std::shared_ptr<torch::nn::Module> block(int64_t index) override { return h[index]; }
  const char* blocks_name() const override { return "h"; }
  // GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2L).
  void init_weights(uint64_t seed) override;
  nlohmann::json hf_config() const override { return config_.to_hf_json(); }
  NamedTensors hf_tensors() const override;
  std::vector<std::string> hf_names(const std::string& parameter) const override;
  torch::Tensor from_hf_layout(const std::string& parameter, torch::Tensor value) const override;
  bool ignorable_hf_tensor(const std::string& name) const override;

  const GPT2Config& config() const { return config_; }

  torch::nn::Embedding wte{nullptr};  // (V, C)
  torch::nn::Embedding wpe{nullptr};  // (P, C)
  torch::nn::ModuleList h{nullptr};   // L blocks
  torch::nn::LayerNorm ln_f{nullptr};
  Projection lm_head{nullptr};  // C -> V, only when embeddings are not tied

 protected:
  torch::Tensor embed(const torch::Tensor& idx, const TokenPositions& positions) override;
  torch::Tensor run_block(int64_t index, const torch::Tensor& x, const TokenPositions& positions,
                          LayerCache cache) override;
  torch::Tensor final_norm(const torch::Tensor& x) override { return ln_f(x); }

 private:
  GPT2Config config_;
  ModelSpec spec_;
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(GPT2);

// Loads an HF GPT-2 directory (config.json + model.safetensors or shards) into fp32 parameters
// on `device`. Bad files are InputError naming the file and tensor (exit 3).
GPT2 load_gpt2(const std::filesystem::path& dir, torch::Device device = torch::kCPU);
// Reads only the model's config.json.
GPT2Config load_gpt2_config(const std::filesystem::path& dir);

// Writes an HF model directory: config.json, model.safetensors (HF names, Conv1D (in, out)
// orientation, tied lm_head stored once) and, when given, the tokenizer's files.
void save_gpt2(const GPT2& model, const std::filesystem::path& dir,
               const Tokenizer* tokenizer = nullptr);

}  // namespace lmtune
