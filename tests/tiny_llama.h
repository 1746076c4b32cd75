// Tiny random Llama-family configs for the gtest files: grouped-query attention, 4 query heads
// over 2 key/value heads, the parts of the family GPT-2 lacks; each file adds what it tests.
#pragma once

#include <cstdint>

#include "lmtune/model/llama.h"

struct TinyLlamaShape {
  int64_t vocab = 50;
  int64_t head_dim = 4;  // hidden size 4 x head_dim, MLP twice as wide
  int64_t n_layer = 2;
  int64_t n_positions = 32;
};

inline lmtune::LlamaConfig tiny_llama_config(const TinyLlamaShape& shape = {}) {
  lmtune::LlamaConfig c;
  c.vocab_size = shape.vocab;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = shape.head_dim;
  c.hidden_size = 4 * shape.head_dim;
  c.intermediate_size = 8 * shape.head_dim;
  c.num_hidden_layers = shape.n_layer;
  c.max_position_embeddings = shape.n_positions;
  return c;
}
