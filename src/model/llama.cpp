#include "lmtune/model/llama.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>

#include "lmtune/model/attention.h"
#include "lmtune/model/fused_ops.h"

namespace lmtune {

namespace {

// The rotary inverse frequencies (D / 2) in fp32, computed with the same tensor operations as
// transformers so that the angles agree to the bit.
torch::Tensor inverse_frequencies(const LlamaConfig& c) {
  const int64_t D = c.head_dim;
  auto exponents =
      torch::arange(0, D, 2, torch::kLong).to(torch::kFloat32) / static_cast<double>(D);
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponents);  // (D / 2)
  switch (c.rope_type) {
    case RopeType::kDefault:
      return inv_freq;
    case RopeType::kLinear:
      return inv_freq / c.rope_factor;
    case RopeType::kLlama3: {
      // Long wavelengths are stretched by the factor, short ones kept, and the band between
      // interpolated (Llama 3.1's scheme).
      const double old_context = static_cast<double>(c.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / c.low_freq_factor;
      const double high_freq_wavelen = old_context / c.high_freq_factor;
      auto wavelen = 2 * M_PI / inv_freq;
      auto scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / c.rope_factor, inv_freq);
      auto smooth =
          (old_context / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
      auto smoothed = (1 - smooth) * scaled / c.rope_factor + smooth * scaled;
      auto medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
      return torch::where(medium, smoothed, scaled);
    }
  }
  return inv_freq;
}

// x rotated by the position's angles, x (B, H, T, D): HF's x * cos + rotate_half(x) * sin, where
// rotate_half(x) = (-x2, x1) for the halves x1, x2. With the sine's first half negated
// (rotation()), rotate_half(x) * sin is the halves swapped times that sine: one copy instead of
// a negation and a copy, and the same values to the bit.
torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos,
                     const torch::Tensor& signed_sin) {
  return x * cos + x.roll(x.size(-1) / 2, /*dims=*/-1) * signed_sin;
}

}  // namespace

ModelSpec LlamaImpl::spec_of(const LlamaConfig& c) {
  ModelSpec s;
  s.model_type = c.model_type;
  s.vocab_size = c.vocab_size;
  // Attention beyond a sliding window is not implemented: sequences stay within it.
  s.context = c.sliding_window > 0 ? std::min(c.max_position_embeddings, c.sliding_window)
                                   : c.max_position_embeddings;
  s.n_layer = c.num_hidden_layers;
  s.hidden_size = c.hidden_size;
  s.n_head = c.num_attention_heads;
  s.head_dim = c.head_dim;
  s.tie_word_embeddings = c.tie_word_embeddings;
  s.eos_token_ids = c.eos_token_ids;
  return s;
}

bool is_llama_family(const std::string& model_type) {
  return model_type == "llama" || model_type == "mistral" || model_type == "qwen2" ||
         model_type == "qwen3";
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto x32 = x.to(torch::kFloat32);
  auto normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * normed.to(x.scalar_type());
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c)
    : n_head_(c.num_attention_heads),
      n_kv_head_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      dropout_(c.attention_dropout) {
  const int64_t C = c.hidden_size, H = n_head_, K = n_kv_head_, D = head_dim_;
  q_proj = register_module("q_proj", Projection(C, H * D, c.qkv_bias));
  k_proj = register_module("k_proj", Projection(C, K * D, c.qkv_bias));
  v_proj = register_module("v_proj", Projection(C, K * D, c.qkv_bias));
  o_proj = register_module("o_proj", Projection(H * D, C, c.o_bias));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(D, c.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(D, c.rms_norm_eps));
  }
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin, LayerCache cache) {
  const int64_t B = x.size(0), T = x.size(1), D = head_dim_;
  auto q = q_proj(x).view({B, T, n_head_, D});                     // (B, T, H, D)
  auto k = k_proj(x).view({B, T, n_kv_head_, D});                  // (B, T, K, D)
  auto v = v_proj(x).view({B, T, n_kv_head_, D}).transpose(1, 2);  // (B, K, T, D)
  if (!q_norm.is_empty()) {
    q = q_norm(q);
    k = k_norm(k);
  }
  q = q.transpose(1, 2);  // (B, H, T, D)
  k = k.transpose(1, 2);  // (B, K, T, D)
  q = rotate(q, cos, sin);
  k = rotate(k, cos, sin);
  auto y = causal_attention(q, k, v, cache, is_training() ? dropout_ : 0.0);  // (B, H, T, D)
  return o_proj(y.transpose(1, 2).reshape({B, T, n_head_ * D}));
}

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& c) {
  gate_proj =
      register_module("gate_proj", Projection(c.hidden_size, c.intermediate_size, c.mlp_bias));
  up_proj = register_module("up_proj", Projection(c.hidden_size, c.intermediate_size, c.mlp_bias));
  down_proj =
      register_module("down_proj", Projection(c.intermediate_size, c.hidden_size, c.mlp_bias));
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));  // SwiGLU through (B, T, F)
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  self_attn = register_module("self_attn", LlamaAttention(c));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  mlp = register_module("mlp", LlamaMLP(c));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin, LayerCache cache,
                                             bool fused) {
  if (fused) {
    const RMSNormImpl& norm = *post_attention_layernorm;
    auto [h, normed] = add_norm(x, self_attn(input_layernorm(x), cos, sin, cache),
                                NormWeights{norm.weight, torch::Tensor(), norm.eps(), /*rms=*/true},
                                /*use_kernel=*/true);
    return h + mlp(normed);
  }
  auto h = x + self_attn(input_layernorm(x), cos, sin, cache);
  return h + mlp(post_attention_layernorm(h));
}

LlamaImpl::LlamaImpl(const LlamaConfig& config)
    : config_(config), spec_(spec_of(config)), inv_freq_(inverse_frequencies(config)) {
  embed_tokens =
      register_module("embed_tokens", torch::nn::Embedding(config.vocab_size, config.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(LlamaDecoderLayer(config));
  norm = register_module("norm", RMSNorm(config.hidden_size, config.rms_norm_eps));
  if (!config.tie_word_embeddings)
    lm_head = register_module("lm_head",
                              Projection(config.hidden_size, config.vocab_size, /*bias=*/false));
  init_weights(/*seed=*/0);
}

torch::Tensor LlamaImpl::output_weight() const {
  return config_.tie_word_embeddings ? embed_tokens->weight : lm_head->weight;
}

std::string LlamaImpl::embedding_names() const {
  return config_.tie_word_embeddings
             ? "embeddings (embed_tokens; lm_head is tied to it, so it is frozen too)"
             : "embeddings (embed_tokens)";
}

void LlamaImpl::init_weights(uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    const bool is_norm = name.find("norm.weight") != std::string::npos;
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm)
      p.fill_(1.0);
    else if (is_bias)
      p.zero_();
    else
      p.normal_(0.0, config_.initializer_range, generator);
  }
}

std::pair<torch::Tensor, torch::Tensor> LlamaImpl::rotation(const TokenPositions& positions,
                                                            int64_t T, torch::Device device) {
  const int64_t past = positions.past;
  const int64_t end = past + T;  // per-row positions count from a row's first slot: never past it
  auto& [cos, sin] = rotation_tables_;
  if (!cos.defined() || cos.device() != device || cos.size(0) < end) {
    // Tables for every position up to the longest sequence seen: each row depends only on its
    // position, so a slice equals a table computed for those positions alone.
    const int64_t grown = cos.defined() && cos.device() == device ? 2 * cos.size(0) : 256;
    const int64_t length = std::max<int64_t>(end, grown);
    auto steps = torch::arange(length, torch::kFloat32);
    auto freqs = torch::outer(steps, inv_freq_);           // (length, D / 2)
    auto angles = torch::cat({freqs, freqs}, /*dim=*/-1);  // (length, D)
    cos = angles.cos().to(device);
    sin = torch::cat({-freqs.sin(), freqs.sin()}, /*dim=*/-1).to(device);  // signed: see rotate()
  }
  if (!positions.rows.defined()) return {cos.narrow(0, past, T), sin.narrow(0, past, T)};  // (T, D)
  const auto& rows = positions.rows;                                                       // (B, T)
  auto gather = [&](const torch::Tensor& table) {
    return table.index_select(0, rows.flatten()).view({rows.size(0), 1, T, -1});  // (B, 1, T, D)
  };
  return {gather(cos), gather(sin)};
}

torch::Tensor LlamaImpl::embed(const torch::Tensor& idx, const TokenPositions& /*positions*/) {
  return embed_tokens(idx);  // (B, T, C)
}

torch::Tensor LlamaImpl::run_block(int64_t index, const torch::Tensor& x,
                                   const TokenPositions& positions, LayerCache cache) {
  auto [cos, sin] = rotation(positions, x.size(1), x.device());
  return layers->ptr<LlamaDecoderLayerImpl>(index)->forward(x, cos, sin, cache, fused_kernels());
}

}  // namespace lmtune
