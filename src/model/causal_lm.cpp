#include "lmtune/model/causal_lm.h"

#include "lmtune/model/activation_checkpoint.h"
#include "lmtune/model/attention.h"
#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/chunked_loss.h"

namespace lmtune {

namespace {

// Each row's positions (B, T) of the new slots past .. past + T - 1 of a batch left-padded by
// `padding` (B): its first real token is at position 0; padding slots get 0 too (never attended).
torch::Tensor padded_row_positions(const torch::Tensor& padding, int64_t past, int64_t T) {
  auto slots = torch::arange(past, past + T, padding.options());    // (T)
  return (slots.unsqueeze(0) - padding.unsqueeze(1)).clamp_min(0);  // (B, T)
}

}  // namespace

torch::Tensor CausalLMImpl::hidden_states(const torch::Tensor& idx, KVCache* cache) {
  const ModelSpec& s = spec();
  const int64_t T = idx.size(1);
  const int64_t past = cache ? cache->length() : 0;
  TORCH_CHECK(past + T <= s.context, "sequence of ", past + T,
              " tokens exceeds the model's context (", s.context, ")");
  if (cache && cache->keys.empty()) {
    cache->keys.resize(s.n_layer);
    cache->values.resize(s.n_layer);
  }
  TokenPositions positions{past, {}};
  torch::Tensor mask;  // computed once for every block
  if (cache && cache->padding.defined()) {
    positions.rows = padded_row_positions(cache->padding, past, T);  // (B, T)
    mask = padded_attention_mask(cache->padding, past, T);           // (B, 1, T, past + T)
  }
  auto x = embed(idx, positions);  // (B, T, C)
  const bool checkpointing =
      checkpoint_every_ > 0 && is_training() && !cache && torch::GradMode::is_enabled();
  for (int64_t i = 0; i < s.n_layer; ++i) {
    if (checkpointing && i % checkpoint_every_ == 0) {
      x = checkpoint_activation(
          [this, i](const torch::Tensor& in) { return run_block(i, in, TokenPositions{}, {}); }, x,
          block(i)->parameters());
    } else {
      x = run_block(i, x, positions,
                    cache
                        ? LayerCache{&cache->keys[i], &cache->values[i], past, cache->reserve, mask}
                        : LayerCache{});
    }
  }
  if (cache) cache->filled += T;
  return final_norm(x);
}

torch::Tensor CausalLMImpl::forward(const torch::Tensor& idx, KVCache* cache) {
  return output_logits(hidden_states(idx, cache));
}

torch::Tensor CausalLMImpl::output_logits(const torch::Tensor& hidden) {
  const torch::Tensor weight = output_weight();  // (V, C)
  const torch::Tensor padded = padded_output_weight(weight, vocab_padding_);
  if (padded.size(0) == weight.size(0)) return autocast_linear(hidden, weight);  // (..., V)
  return autocast_linear(hidden, padded).narrow(-1, 0, weight.size(0));          // (..., V)
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

}  // namespace lmtune
