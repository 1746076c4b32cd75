// Tiny random GPT-2s and token batches for the gtest files; each file gives its own shape.
#pragma once

#include <cstdint>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "lmtune/data/dataset.h"
#include "lmtune/model/gpt2.h"

struct TinyShape {
  int64_t n_layer = 2;
  int64_t n_embd = 16;  // 2 heads
  int64_t n_positions = 32;
  int64_t vocab = 50;
  bool tied = true;  // output projection shares the token embedding
};

inline lmtune::GPT2Config tiny_gpt2_config(const TinyShape& shape, double dropout = 0.0) {
  lmtune::GPT2Config c;
  c.n_layer = shape.n_layer;
  c.n_head = 2;
  c.n_embd = shape.n_embd;
  c.n_positions = shape.n_positions;
  c.vocab_size = shape.vocab;
  c.tie_word_embeddings = shape.tied;
  c.embd_pdrop = c.attn_pdrop = c.resid_pdrop = dropout;
  return c;
}

// A model of `shape` with weights drawn from `seed`, in training mode, on the CPU.
inline lmtune::GPT2 tiny_gpt2(const TinyShape& shape, double dropout, uint64_t seed) {
  lmtune::GPT2 model(tiny_gpt2_config(shape, dropout));
  model->init_weights(seed);
  model->train();
  return model;
}

// `rows` sequences of `seq` random tokens below `vocab` with their next-token targets, the first
// target ignored as padding would be; the same tokens on every call.
inline lmtune::Batch random_batch(int64_t vocab, int64_t rows, int64_t seq) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  auto tokens = torch::randint(vocab, {rows, seq + 1}, generator, torch::kLong);  // (B, T + 1)
  lmtune::Batch batch{tokens.narrow(1, 0, seq), tokens.narrow(1, 1, seq).clone(), 0};
  batch.targets.index_put_({0, 0}, -100);
  batch.target_tokens = batch.targets.ne(-100).sum().item<int64_t>();
  return batch;
}
