// Unit tests of causal attention: the mask of a left-padded batch and the KV cache, against
// attention written out by hand on each row alone.
#include <cmath>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "lmtune/model/attention.h"

namespace {

using torch::indexing::Slice;

// softmax(q kᵀ / √D, causal) v of one unpadded row: q (H, T, D), k and v (H_kv, T, D), each query
// at the end of the sequence (the last T of the S keys).
torch::Tensor attention_written_out(const torch::Tensor& q, torch::Tensor k, torch::Tensor v) {
  const int64_t T = q.size(1), S = k.size(1), groups = q.size(0) / k.size(0);
  k = k.repeat_interleave(groups, /*dim=*/0);  // (H, S, D)
  v = v.repeat_interleave(groups, /*dim=*/0);
  auto scores = torch::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(q.size(2)));
  auto visible = torch::ones({T, S}, torch::kBool).tril(S - T);  // (T, S)
  return torch::matmul(scores.masked_fill(visible.logical_not(), -INFINITY).softmax(-1), v);
}

TEST(PaddedAttentionMask, TokensSeeTheSlotsOfTheirRowUpToTheirOwn) {
  const auto padding = torch::tensor({0, 2}, torch::kLong);
  auto prefill = lmtune::padded_attention_mask(padding, /*past=*/0, /*T=*/4);
  auto expected = torch::tensor({1, 0, 0, 0,  //
                                 1, 1, 0, 0,  //
                                 1, 1, 1, 0,  //
                                 1, 1, 1, 1,  //
                                 // row 1: slots 0 and 1 are padding, which sees itself alone
                                 1, 0, 0, 0,  //
                                 0, 1, 0, 0,  //
                                 0, 0, 1, 0,  //
                                 0, 0, 1, 1})
                      .to(torch::kBool)
                      .view({2, 1, 4, 4});
  EXPECT_TRUE(torch::equal(prefill, expected));
  auto step = lmtune::padded_attention_mask(padding, /*past=*/4, /*T=*/1);  // (2, 1, 1, 5)
  EXPECT_TRUE(torch::equal(
      step, torch::tensor({1, 1, 1, 1, 1, 0, 0, 1, 1, 1}).to(torch::kBool).view({2, 1, 1, 5})));
}

// A left-padded batch of two rows (5 and 3 prompt tokens, then three tokens one at a time)
// through causal_attention with a cache: every real token's output is what attention over its
// row alone gives, whatever the padding slots hold, and the cache outgrows its reservation.
TEST(CausalAttention, LeftPaddedRowsAttendAsTheyWouldAlone) {
  torch::NoGradGuard no_grad;
  const int64_t H = 4, H_kv = 2, D = 8, prompt = 5, steps = 3, total = prompt + steps;
  const std::vector<int64_t> lengths = {5, 3};
  auto generator = at::make_generator<at::CPUGeneratorImpl>(11);
  auto q = torch::randn({2, H, total, D}, generator);  // each row's real tokens are last
  auto k = torch::randn({2, H_kv, total, D}, generator);
  auto v = torch::randn({2, H_kv, total, D}, generator);
  for (auto* t : {&q, &k, &v})  // huge padding: attending to it anywhere would show
    t->index_put_({1, Slice(), Slice(0, prompt - lengths[1])}, 1e4);
  const auto padding = torch::tensor(std::vector<int64_t>{0, prompt - lengths[1]});

  torch::Tensor keys, values;
  std::vector<torch::Tensor> outputs;
  auto run = [&](int64_t past, int64_t T) {
    lmtune::LayerCache cache{&keys, &values, past, /*reserve=*/6,
                             lmtune::padded_attention_mask(padding, past, T)};
    auto slice = [&](const torch::Tensor& t) { return t.narrow(2, past, T); };
    outputs.push_back(lmtune::causal_attention(slice(q), slice(k), slice(v), cache, 0.0));
  };
  run(/*past=*/0, prompt);
  for (int64_t past = prompt; past < total; ++past) run(past, 1);
  EXPECT_EQ(keys.size(2), 12);              // reserved 6, then twice that
  auto y = torch::cat(outputs, /*dim=*/2);  // (2, H, total, D)
  EXPECT_TRUE(y.isfinite().all().item<bool>());
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t first = prompt - lengths[b];  // the row's first real slot
    auto alone = [&](const torch::Tensor& t) { return t[b].narrow(1, first, total - first); };
    auto expected = attention_written_out(alone(q), alone(k), alone(v));  // (H, T_b, D)
    EXPECT_TRUE(torch::allclose(alone(y), expected, /*rtol=*/1e-5, /*atol=*/1e-5))
        << "row " << b << ": max difference " << (alone(y) - expected).abs().max().item<double>();
  }
}

// train.attention_backend: math takes LibTorch's unfused attention instead of the CPU's flash
// kernel (seen in the backward node autograd records), for the same values; auto restores it.
TEST(AttentionBackend, MathReplacesTheFlashKernelWithTheSameValues) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  auto q = torch::randn({2, 4, 16, 8}, generator).requires_grad_();
  auto k = torch::randn({2, 2, 16, 8}, generator).requires_grad_();
  auto v = torch::randn({2, 2, 16, 8}, generator).requires_grad_();
  auto attend = [&] { return lmtune::causal_attention(q, k, v, lmtune::LayerCache{}, 0.0); };
  auto node = [](const torch::Tensor& y) {
    // Through the view and reshape of grouped-query heads to the attention node itself.
    std::string names;
    for (auto fn = y.grad_fn(); fn;
         fn = fn->next_edges().empty() ? nullptr : fn->next_edges()[0].function)
      names += fn->name() + " ";
    return names;
  };
  lmtune::use_attention_backend(lmtune::AttentionBackend::kAuto);
  auto fused = attend();
  lmtune::use_attention_backend(lmtune::AttentionBackend::kMath);
  auto math = attend();
  lmtune::use_attention_backend(lmtune::AttentionBackend::kAuto);
  auto restored = attend();
  EXPECT_NE(node(fused).find("FlashAttention"), std::string::npos) << node(fused);
  EXPECT_EQ(node(math).find("FlashAttention"), std::string::npos) << node(math);
  EXPECT_NE(node(restored).find("FlashAttention"), std::string::npos) << node(restored);
  EXPECT_TRUE(torch::allclose(math, fused, /*rtol=*/1e-5, /*atol=*/1e-6));
  EXPECT_TRUE(torch::equal(restored, fused));
}

// On the CPU, grouped-query heads go to LibTorch's attention as they are (enable_gqa) instead of
// repeated: the same outputs and the same gradients for q, k and v as attention over heads
// repeated by hand, whose gradients autograd sums back over each group.
TEST(CausalAttention, GroupedHeadsGiveWhatRepeatedHeadsGiveWithGradients) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(7);
  const int64_t B = 2, H = 6, H_kv = 2, T = 24, D = 16;
  auto q = torch::randn({B, H, T, D}, generator).requires_grad_();
  auto k = torch::randn({B, H_kv, T, D}, generator).requires_grad_();
  auto v = torch::randn({B, H_kv, T, D}, generator).requires_grad_();
  auto grad_y = torch::randn({B, H, T, D}, generator);
  auto grads = [&](const torch::Tensor& y) {
    return torch::autograd::grad({y}, {q, k, v}, {grad_y});
  };
  auto grouped = lmtune::causal_attention(q, k, v, lmtune::LayerCache{}, 0.0);
  auto repeated =
      lmtune::causal_attention(q, k.repeat_interleave(H / H_kv, /*dim=*/1),
                               v.repeat_interleave(H / H_kv, /*dim=*/1), lmtune::LayerCache{}, 0.0);
  EXPECT_TRUE(torch::allclose(grouped, repeated, /*rtol=*/1e-5, /*atol=*/1e-6));
  auto ours = grads(grouped), theirs = grads(repeated);
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(torch::allclose(ours[i], theirs[i], /*rtol=*/1e-4, /*atol=*/1e-5))
        << names[i] << ": max difference " << (ours[i] - theirs[i]).abs().max().item<double>();
}

}  // namespace
