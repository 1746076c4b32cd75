// Causal self-attention over heads, shared by every architecture: the KV cache of generation and
// grouped-query attention (fewer key/value heads than query heads).
//
// Dimensions: B batch, H query heads, H_kv key/value heads, T new tokens, S cached + new tokens,
// D head size.
#pragma once

#include <torch/torch.h>

#include "lmtune/model/causal_lm.h"

namespace lmtune {

// q (B, H, T, D), k and v (B, H_kv, T, D) -> (B, H, T, D), each query attending to the keys up to
// its own position. With a cache slot, the keys and values of earlier steps come first and this
// step's are appended to it. H must be a multiple of H_kv.
torch::Tensor causal_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                               LayerCache cache, double dropout);

}  // namespace lmtune
