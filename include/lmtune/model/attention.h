// Causal self-attention over heads, shared by every architecture: the KV cache of generation (with
// the mask of a left-padded batch) and grouped-query attention (fewer key/value heads than query
// heads).
//
// Dimensions: B batch, H query heads, H_kv key/value heads, T new tokens, S cached + new tokens,
// D head size.
#pragma once

#include <torch/torch.h>

#include "lmtune/core/config.h"
#include "lmtune/model/causal_lm.h"

namespace lmtune {

// q (B, H, T, D), k and v (B, H_kv, T, D) -> (B, H, T, D), each query attending to the keys up to
// its own position. With a cache slot, the keys and values of earlier steps come first and this
// step's are written after them; its mask, when set, says which of those keys each query sees.
// H must be a multiple of H_kv.
torch::Tensor causal_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                               LayerCache cache, double dropout);

// The mask (B, 1, T, past + T) bool of new slots past .. past + T - 1 in a batch whose row b holds
// padding[b] slots of left padding: a token attends to the slots up to its own that hold tokens
// of its row. A padding slot attends to itself alone, so that every softmax has a term and
// padding never turns into NaN.
torch::Tensor padded_attention_mask(const torch::Tensor& padding, int64_t past, int64_t T);

// train.attention_backend, for the whole process: `backend` first in the order LibTorch tries its
// attention kernels (the others after it, in LibTorch's own order, for inputs it cannot take);
// kMath turns the fused kernels off. kAuto restores LibTorch's defaults.
void use_attention_backend(AttentionBackend backend);

}  // namespace lmtune
