// The interface every architecture implements (GPT-2, the Llama family), the block loop with
// activation checkpointing that they all share, and the handle the trainer, evaluation,
// generation, freezing and checkpoints hold a model by. Never reads or writes files.
//
// Dimensions: B batch, T time (tokens), C channels (hidden size), V vocabulary, L layers.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "lmtune/io/safetensors.h"

namespace lmtune {

// What the rest of lmtune needs to know of a model's shape and vocabulary.
struct ModelSpec {
  std::string model_type;  // config.json's model_type: "gpt2", "llama", "qwen2", ...
  int64_t vocab_size = 0;
  int64_t context = 0;  // longest sequence: n_positions or max_position_embeddings
  int64_t n_layer = 0;
  int64_t hidden_size = 0;
  int64_t n_head = 0;
  int64_t head_dim = 0;             // channels per head
  int64_t position_parameters = 0;  // learned position embeddings (GPT-2's wpe), else 0
  bool tie_word_embeddings = true;
  std::vector<int64_t> eos_token_ids;  // generation stops on any of them
};

// Keys and values of past tokens per layer, for generation a few tokens at a time. Each layer's
// tensors hold more slots than are filled, so that a step writes its keys and values in place
// instead of copying the cache. A batch of prompts of different lengths is left-padded: row b's
// first padding[b] slots hold no token of its sequence, no token ever attends to them, and the
// row's positions count from its first real token (0, 1, ... as if it were alone).
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer (B, H_kv, reserved slots, D)
  std::vector<torch::Tensor> values;  // per layer (B, H_kv, reserved slots, D)
  int64_t filled = 0;                 // slots that hold keys and values (S)
  // Slots a layer reserves at its first step (0: that step's tokens); a full layer doubles them.
  int64_t reserve = 0;
  torch::Tensor padding;  // (B) long on the model's device; undefined = no padding
  int64_t length() const { return filled; }
};

// One layer's slot of a KVCache (both undefined at first), or none when not generating.
struct LayerCache {
  torch::Tensor* keys = nullptr;
  torch::Tensor* values = nullptr;
  int64_t past = 0;     // slots filled before this step
  int64_t reserve = 0;  // KVCache::reserve
  torch::Tensor mask;   // (B, 1, T, past + T) bool in a padded batch: which slots each new token
                        // attends to; undefined = every earlier slot (causal)
};

// Where a forward's T new tokens sit in their sequences: at past .. past + T - 1 in every row,
// or, in a left-padded batch, at each row's own positions.
struct TokenPositions {
  int64_t past = 0;
  torch::Tensor rows;  // (B, T) long; undefined = past .. past + T - 1 for every row
};

// A decoder-only transformer: token embedding, a stack of blocks, a final norm and a vocabulary
// projection. Parameter names are the Hugging Face ones of the architecture (without the
// "transformer." or "model." prefix); the conversions to HF's files live beside each model.
class CausalLMImpl : public torch::nn::Module {
 public:
  // idx (B, T) token ids -> the final hidden states (B, T, C). With a cache, positions continue
  // after it (per row, with its padding) and it grows by T. Blocks are recomputed in backward as
  // set_gradient_checkpointing says (training mode, grad enabled, no cache).
  torch::Tensor hidden_states(const torch::Tensor& idx, KVCache* cache = nullptr);
  // idx (B, T) -> logits (B, T, V).
  torch::Tensor forward(const torch::Tensor& idx, KVCache* cache = nullptr);
  // The vocabulary projection: hidden states (..., C) -> logits (..., V), as forward() applies it.
  torch::Tensor output_logits(const torch::Tensor& hidden);

  // The vocabulary projection's weight (V, C): the token embedding when tied.
  virtual torch::Tensor output_weight() const = 0;
  virtual const ModelSpec& spec() const = 0;

  // What freezing touches: the embedding parameters (token, and position where there is one),
  // with their names for the log, and each block.
  virtual std::vector<torch::Tensor> embedding_parameters() const = 0;
  virtual std::string embedding_names() const = 0;
  virtual std::shared_ptr<torch::nn::Module> block(int64_t index) = 0;
  // The name of the block list in parameter names: "h" (h.0.attn...) or "layers".
  virtual const char* blocks_name() const = 0;

  // The architecture's own initialisation, for training from scratch.
  virtual void init_weights(uint64_t seed) = 0;

  // The model in Hugging Face's form: config.json, and tensors with HF names and layouts (a tied
  // output head stored once).
  virtual nlohmann::json hf_config() const = 0;
  virtual NamedTensors hf_tensors() const = 0;
  // The names a parameter may be stored under in HF files; lmtune writes the first.
  virtual std::vector<std::string> hf_names(const std::string& parameter) const = 0;
  // A tensor as stored in HF's file -> the parameter's layout (GPT-2's Conv1D transposes).
  virtual torch::Tensor from_hf_layout(const std::string& /*parameter*/,
                                       torch::Tensor value) const {
    return value;
  }
  // HF tensors this architecture does not hold as parameters and may ignore when loading
  // (buffers such as GPT-2's attention masks, a tied lm_head).
  virtual bool ignorable_hf_tensor(const std::string& name) const = 0;

  // Activation checkpointing of every `every`-th block (0, every, 2 * every, ...); 0 turns it off.
  void set_gradient_checkpointing(int64_t every) { checkpoint_every_ = every; }
  // forward() projects onto a vocabulary padded with zero rows to a multiple of `multiple` and
  // returns a view of the first V logits: the same values, from matrix products whose sizes GPU
  // libraries run fast (an odd V such as GPT-2's 50,257 gets slow kernels). 0 turns it off.
  void set_vocab_padding(int64_t multiple) { vocab_padding_ = multiple; }
  int64_t vocab_padding() const { return vocab_padding_; }
  // Blocks run each residual add with the norm after it (and GPT-2's bias + GELU) through
  // model/fused_ops.h, whose CUDA kernels take them on a GPU. Off: the plain operations.
  void set_fused_kernels(bool on) { fused_kernels_ = on; }
  bool fused_kernels() const { return fused_kernels_; }

 protected:
  // idx (B, T) -> (B, T, C): token (and position) embeddings of the tokens at `positions`.
  virtual torch::Tensor embed(const torch::Tensor& idx, const TokenPositions& positions) = 0;
  // Block `index` on x (B, T, C) at `positions` -> (B, T, C).
  virtual torch::Tensor run_block(int64_t index, const torch::Tensor& x,
                                  const TokenPositions& positions, LayerCache cache) = 0;
  // The final norm: (B, T, C) -> (B, T, C).
  virtual torch::Tensor final_norm(const torch::Tensor& x) = 0;

 private:
  int64_t checkpoint_every_ = 0;
  int64_t vocab_padding_ = 0;
  bool fused_kernels_ = false;
};

// A handle to any architecture, as the trainer holds it. Converts from the typed handles
// (GPT2, Llama), so a function taking `const CausalLM&` takes any of them.
class CausalLM {
 public:
  CausalLM() = default;
  CausalLM(std::nullptr_t) {}  // NOLINT: as ModuleHolder's
  explicit CausalLM(std::shared_ptr<CausalLMImpl> impl) : impl_(std::move(impl)) {}
  template <class Impl, class = std::enable_if_t<std::is_base_of_v<CausalLMImpl, Impl>>>
  CausalLM(const torch::nn::ModuleHolder<Impl>& holder) : impl_(holder.ptr()) {}  // NOLINT

  CausalLMImpl* operator->() const { return impl_.get(); }
  CausalLMImpl& operator*() const { return *impl_; }
  const std::shared_ptr<CausalLMImpl>& ptr() const { return impl_; }
  explicit operator bool() const { return impl_ != nullptr; }

 private:
  std::shared_ptr<CausalLMImpl> impl_;
};

// Mean cross-entropy of logits (B, T, V) against targets (B, T); targets of -100 are ignored.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace lmtune
