#include "lmtune/model/attention.h"

#include <algorithm>
#include <vector>

#include <ATen/Context.h>

#include "lmtune/model/bf16_emulation.h"

namespace lmtune {

namespace {

// (B, H_kv, S, D) -> (B, H_kv * groups, S, D), each key/value head serving `groups` query heads.
torch::Tensor repeat_heads(const torch::Tensor& t, int64_t groups) {
  if (groups == 1) return t;
  const int64_t B = t.size(0), H_kv = t.size(1), S = t.size(2), D = t.size(3);
  return t.unsqueeze(2).expand({B, H_kv, groups, S, D}).reshape({B, H_kv * groups, S, D});
}

// Writes a step's keys or values (B, H_kv, T, D) into a layer's reserved slots past .. past + T - 1
// and returns the filled ones (B, H_kv, past + T, D). When the slots run out, a reservation of
// at least twice the size takes their place, so a token costs a copy of the cache only a
// logarithmic number of times.
torch::Tensor append_to_cache(torch::Tensor& reserved, const torch::Tensor& step, int64_t past,
                              int64_t reserve) {
  const int64_t filled = past + step.size(2);
  if (!reserved.defined() || reserved.size(2) < filled) {
    const int64_t old = reserved.defined() ? reserved.size(2) : 0;
    const int64_t slots = std::max({filled, reserve, 2 * old});
    auto grown = torch::empty({step.size(0), step.size(1), slots, step.size(3)}, step.options());
    if (past > 0) grown.narrow(2, 0, past).copy_(reserved.narrow(2, 0, past));
    reserved = grown;
  }
  reserved.narrow(2, past, step.size(2)).copy_(step);
  return reserved.narrow(2, 0, filled);
}

}  // namespace

torch::Tensor causal_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                               LayerCache cache, double dropout) {
  const int64_t T = q.size(2);
  bool causal = true;
  std::optional<torch::Tensor> mask;
  if (cache.keys) {
    k = append_to_cache(*cache.keys, k, cache.past, cache.reserve);  // (B, H_kv, S, D)
    v = append_to_cache(*cache.values, v, cache.past, cache.reserve);
    if (cache.mask.defined()) {
      causal = false;
      mask = cache.mask;
    } else if (cache.past > 0) {
      causal = false;
      // Query t sees every cached key and the new keys up to itself; one new token sees all.
      if (T > 1)
        mask = torch::ones({T, cache.past + T}, q.options().dtype(torch::kBool)).tril(cache.past);
    }
  }
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "query heads (", q.size(1),
              ") are not a multiple of key/value heads (", k.size(1), ")");
  const int64_t groups = q.size(1) / k.size(1);
  // LibTorch's CPU attention reads each key/value head for its group of query heads itself
  // (saving the copies and, in backward, their sums); on CUDA its memory-efficient kernel does
  // not take groups and would give way to the slow math path, so there the heads are repeated.
  if (groups > 1 && q.device().is_cpu())
    return autocast_attention(q, k, v, mask, dropout, causal, /*grouped=*/true);  // (B, H, T, D)
  return autocast_attention(q, repeat_heads(k, groups), repeat_heads(v, groups), mask, dropout,
                            causal);  // (B, H, T, D)
}

torch::Tensor padded_attention_mask(const torch::Tensor& padding, int64_t past, int64_t T) {
  auto slots = torch::arange(past + T, padding.options()).unsqueeze(0);           // (1, S)
  auto queries = slots.narrow(1, past, T).t();                                    // (T, 1)
  auto in_row = (slots >= padding.unsqueeze(1)).unsqueeze(1);                     // (B, 1, S)
  auto mask = in_row.logical_and(slots <= queries).logical_or(slots == queries);  // (B, T, S)
  return mask.unsqueeze(1);                                                       // (B, 1, T, S)
}

void use_attention_backend(AttentionBackend backend) {
  using at::SDPBackend;
  // LibTorch's own order (ATen/Context.h), which kAuto keeps.
  std::vector<SDPBackend> order = {SDPBackend::flash_attention, SDPBackend::efficient_attention,
                                   SDPBackend::math, SDPBackend::cudnn_attention,
                                   SDPBackend::overrideable};
  SDPBackend first = SDPBackend::error;
  switch (backend) {
    case AttentionBackend::kAuto:
    case AttentionBackend::kMath:
      break;
    case AttentionBackend::kFlash:
      first = SDPBackend::flash_attention;
      break;
    case AttentionBackend::kEfficient:
      first = SDPBackend::efficient_attention;
      break;
    case AttentionBackend::kCudnn:
      first = SDPBackend::cudnn_attention;
      break;
  }
  if (first != SDPBackend::error)
    std::rotate(order.begin(), std::find(order.begin(), order.end(), first),
                std::find(order.begin(), order.end(), first) + 1);
  std::vector<int64_t> priority;
  for (SDPBackend b : order) priority.push_back(static_cast<int64_t>(b));
  auto& context = at::globalContext();
  context.setSDPPriorityOrder(priority);
  const bool fused = backend != AttentionBackend::kMath;
  context.setSDPUseFlash(fused);
  context.setSDPUseMemEfficient(fused);
  context.setSDPUseCuDNN(fused);
  context.setSDPUseMath(true);
}

}  // namespace lmtune
