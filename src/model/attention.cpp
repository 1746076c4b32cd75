#include "lmtune/model/attention.h"

#include "lmtune/model/bf16_emulation.h"

namespace lmtune {

namespace {

// (B, H_kv, S, D) -> (B, H_kv * groups, S, D), each key/value head serving `groups` query heads.
torch::Tensor repeat_heads(const torch::Tensor& t, int64_t groups) {
  if (groups == 1) return t;
  const int64_t B = t.size(0), H_kv = t.size(1), S = t.size(2), D = t.size(3);
  return t.unsqueeze(2).expand({B, H_kv, groups, S, D}).reshape({B, H_kv * groups, S, D});
}

}  // namespace

torch::Tensor causal_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                               LayerCache cache, double dropout) {
  const int64_t T = q.size(2);
  bool causal = true;
  std::optional<torch::Tensor> mask;
  if (cache.keys) {
    if (cache.keys->defined()) {
      k = torch::cat({*cache.keys, k}, /*dim=*/2);  // (B, H_kv, S, D)
      v = torch::cat({*cache.values, v}, /*dim=*/2);
    }
    *cache.keys = k;
    *cache.values = v;
    const int64_t past = k.size(2) - T;
    if (past > 0) {
      causal = false;
      // Query t sees every cached key and the new keys up to itself; one new token sees all.
      if (T > 1) mask = torch::ones({T, past + T}, q.options().dtype(torch::kBool)).tril(past);
    }
  }
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "query heads (", q.size(1),
              ") are not a multiple of key/value heads (", k.size(1), ")");
  const int64_t groups = q.size(1) / k.size(1);
  return autocast_attention(q, repeat_heads(k, groups), repeat_heads(v, groups), mask, dropout,
                            causal);  // (B, H, T, D)
}

}  // namespace lmtune
