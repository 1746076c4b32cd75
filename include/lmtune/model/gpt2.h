// GPT-2: its Hugging Face config, the LibTorch module (parameter names are HF's), and HF-layout
// import/export, which is therefore a name map plus the Conv1D transposes.
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

// Keys and values of past tokens per layer, for generation one token at a time.
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer (B, H, T_past, D)
  std::vector<torch::Tensor> values;  // per layer (B, H, T_past, D)
  int64_t length() const { return keys.empty() ? 0 : keys[0].size(2); }
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const GPT2Config& config);
  // x (B, T, C) -> (B, T, C). With `past`, attends to it and appends this step's keys/values.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* past_k = nullptr,
                        torch::Tensor* past_v = nullptr);

  torch::nn::Linear c_attn{nullptr};  // C -> 3C (q, k, v)
  torch::nn::Linear c_proj{nullptr};  // C -> C

 private:
  int64_t n_head_;
  double attn_pdrop_;
  torch::nn::Dropout resid_dropout_{nullptr};
};
TORCH_MODULE(CausalSelfAttention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const GPT2Config& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)

  torch::nn::Linear c_fc{nullptr};    // C -> 4C
  torch::nn::Linear c_proj{nullptr};  // 4C -> C

 private:
  Activation activation_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(MLP);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const GPT2Config& config);
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* past_k = nullptr,
                        torch::Tensor* past_v = nullptr);

  torch::nn::LayerNorm ln_1{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(Block);

// GPT2LMHeadModel. Parameter names are HF's without the "transformer." prefix: wte.weight,
// h.0.attn.c_attn.weight, ... Linear weights are stored (out, in); HF's Conv1D stores (in, out).
class GPT2Impl : public torch::nn::Module {
 public:
  explicit GPT2Impl(const GPT2Config& config);

  // idx (B, T) token ids -> logits (B, T, V). With a cache, positions continue after it and it
  // grows by T.
  torch::Tensor forward(const torch::Tensor& idx, KVCache* cache = nullptr);
  // The final hidden states (B, T, C), before the vocabulary projection.
  torch::Tensor hidden_states(const torch::Tensor& idx, KVCache* cache = nullptr);
  // The vocabulary projection: wte for tied embeddings, lm_head otherwise. (V, C)
  torch::Tensor output_weight() const;

  // GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2L).
  void init_weights(uint64_t seed);

  // Activation checkpointing of every `every`-th block (blocks 0, every, 2 * every, ...); 0 turns
  // it off. Applies only in training mode with grad enabled and no KV cache.
  void set_gradient_checkpointing(int64_t every) { checkpoint_every_ = every; }
  int64_t gradient_checkpointing() const { return checkpoint_every_; }

  const GPT2Config& config() const { return config_; }

  torch::nn::Embedding wte{nullptr};  // (V, C)
  torch::nn::Embedding wpe{nullptr};  // (P, C)
  torch::nn::ModuleList h{nullptr};   // L blocks
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear lm_head{nullptr};  // C -> V, only when embeddings are not tied

 private:
  GPT2Config config_;
  torch::nn::Dropout drop_{nullptr};
  int64_t checkpoint_every_ = 0;
};
TORCH_MODULE(GPT2);

// Mean cross-entropy of logits (B, T, V) against targets (B, T); targets of -100 are ignored.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

// Loads an HF model directory (config.json + model.safetensors) into fp32 parameters on `device`.
// Bad files are InputError naming the file and tensor (exit 3).
GPT2 load_gpt2(const std::filesystem::path& dir, torch::Device device = torch::kCPU);
// Copies the weights of an HF model.safetensors into `model` (on any device), checking names and
// shapes like load_gpt2.
void load_gpt2_weights(GPT2& model, const std::filesystem::path& safetensors_file);
// Reads only the model's config.json.
GPT2Config load_gpt2_config(const std::filesystem::path& dir);

// Writes an HF model directory: config.json, model.safetensors (HF names, Conv1D (in, out)
// orientation, tied lm_head stored once) and, when given, the tokenizer's files.
void save_gpt2(const GPT2& model, const std::filesystem::path& dir,
               const Tokenizer* tokenizer = nullptr);

}  // namespace lmtune
