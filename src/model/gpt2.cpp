#include "lmtune/model/gpt2.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>

#include "lmtune/model/attention.h"
#include "lmtune/model/fused_ops.h"

namespace lmtune {

namespace {

torch::nn::LayerNorm layer_norm(const GPT2Config& config) {
  return torch::nn::LayerNorm(
      torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon));
}

}  // namespace

ModelSpec GPT2Impl::spec_of(const GPT2Config& c) {
  ModelSpec s;
  s.model_type = "gpt2";
  s.vocab_size = c.vocab_size;
  s.context = c.n_positions;
  s.n_layer = c.n_layer;
  s.hidden_size = c.n_embd;
  s.n_head = c.n_head;
  s.head_dim = c.n_embd / c.n_head;
  s.position_parameters = c.n_positions * c.n_embd;
  s.tie_word_embeddings = c.tie_word_embeddings;
  s.eos_token_ids = {c.eos_token_id};
  return s;
}

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPT2Config& config)
    : n_head_(config.n_head), attn_pdrop_(config.attn_pdrop) {
  c_attn = register_module("c_attn", Projection(config.n_embd, 3 * config.n_embd, /*bias=*/true));
  c_proj = register_module("c_proj", Projection(config.n_embd, config.n_embd, /*bias=*/true));
  resid_dropout_ = register_module("resid_dropout", torch::nn::Dropout(config.resid_pdrop));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, LayerCache cache) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = n_head_, D = C / H;
  auto qkv = c_attn(x).split(C, /*dim=*/2);  // 3 x (B, T, C)
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, H, D}).transpose(1, 2); };
  double dropout = is_training() ? attn_pdrop_ : 0.0;
  auto y = causal_attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]), cache,
                            dropout);  // (B, H, T, D)
  y = y.transpose(1, 2).contiguous().view({B, T, C});
  return resid_dropout_(c_proj(y));
}

MLPImpl::MLPImpl(const GPT2Config& config) : activation_(config.activation) {
  c_fc = register_module("c_fc", Projection(config.n_embd, config.mlp_width(), /*bias=*/true));
  c_proj = register_module("c_proj", Projection(config.mlp_width(), config.n_embd, /*bias=*/true));
  dropout_ = register_module("dropout", torch::nn::Dropout(config.resid_pdrop));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x, bool fused) {
  if (fused && activation_ != Activation::kRelu && c_fc->bias.defined()) {
    auto hidden = bias_gelu(c_fc->forward_without_bias(x), c_fc->bias,
                            /*tanh=*/activation_ == Activation::kGeluTanh, /*use_kernel=*/true);
    return dropout_(c_proj(hidden));
  }
  auto hidden = c_fc(x);  // (B, T, 4C)
  switch (activation_) {
    case Activation::kGeluTanh:
      hidden = torch::gelu(hidden, "tanh");
      break;
    case Activation::kGelu:
      hidden = torch::gelu(hidden);
      break;
    case Activation::kRelu:
      hidden = torch::relu(hidden);
      break;
  }
  return dropout_(c_proj(hidden));
}

BlockImpl::BlockImpl(const GPT2Config& config) {
  ln_1 = register_module("ln_1", layer_norm(config));
  attn = register_module("attn", CausalSelfAttention(config));
  ln_2 = register_module("ln_2", layer_norm(config));
  mlp = register_module("mlp", MLP(config));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, LayerCache cache, bool fused) {
  if (fused) {
    const auto& o = ln_2->options;
    auto [y, normed] = add_norm(x, attn(ln_1(x), cache),
                                NormWeights{ln_2->weight, ln_2->bias, o.eps(), /*rms=*/false},
                                /*use_kernel=*/true);
    return y + mlp(normed, /*fused=*/true);
  }
  auto y = x + attn(ln_1(x), cache);
  return y + mlp(ln_2(y));
}

GPT2Impl::GPT2Impl(const GPT2Config& config) : config_(config), spec_(spec_of(config)) {
  wte = register_module("wte", torch::nn::Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(config.n_positions, config.n_embd));
  drop_ = register_module("drop", torch::nn::Dropout(config.embd_pdrop));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) h->push_back(Block(config));
  ln_f = register_module("ln_f", layer_norm(config));
  if (!config.tie_word_embeddings) {
    lm_head =
        register_module("lm_head", Projection(config.n_embd, config.vocab_size, /*bias=*/false));
  }
  init_weights(/*seed=*/0);
}

torch::Tensor GPT2Impl::embed(const torch::Tensor& idx, const TokenPositions& positions) {
  if (positions.rows.defined()) return drop_(wte(idx) + wpe(positions.rows));  // (B, T, C)
  const int64_t past = positions.past;
  auto steps = torch::arange(past, past + idx.size(1), idx.options().dtype(torch::kLong));
  return drop_(wte(idx) + wpe(steps));  // (B, T, C)
}

torch::Tensor GPT2Impl::run_block(int64_t index, const torch::Tensor& x,
                                  const TokenPositions& /*positions*/, LayerCache cache) {
  return h->ptr<BlockImpl>(index)->forward(x, cache, fused_kernels());
}

torch::Tensor GPT2Impl::output_weight() const {
  return config_.tie_word_embeddings ? wte->weight : lm_head->weight;
}

std::vector<torch::Tensor> GPT2Impl::embedding_parameters() const {
  return {wte->weight, wpe->weight};
}

std::string GPT2Impl::embedding_names() const {
  return config_.tie_word_embeddings
             ? "embeddings (wte, wpe; lm_head is tied to wte, so it is frozen too)"
             : "embeddings (wte, wpe)";
}

void GPT2Impl::init_weights(uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    bool is_layer_norm = name.find("ln_") != std::string::npos;
    bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_layer_norm) {
      is_bias ? p.zero_() : p.fill_(1.0);
    } else if (is_bias) {
      p.zero_();
    } else {
      bool residual = name.find("c_proj.weight") != std::string::npos;
      p.normal_(0.0, residual ? residual_std : 0.02, generator);
    }
  }
}

}  // namespace lmtune
