// Unit tests of the training benchmark (its JSON fields and their arithmetic, not its timings) and
// of the bf16 emulation the model's matmuls take on CPUs without bf16 hardware.
#include <cmath>

#include <gtest/gtest.h>

#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/bench.h"
#include "lmtune/train/precision.h"

namespace {

lmtune::BenchOptions tiny_shape(lmtune::Precision precision) {
  lmtune::BenchOptions o;
  o.n_layer = 2;
  o.n_head = 2;
  o.n_embd = 32;
  o.vocab = 100;
  o.batch = 2;
  o.seq = 16;
  o.precision = precision;
  o.steps = 1;
  o.warmup = 0;
  o.threads = 1;
  return o;
}

void expect_consistent(const lmtune::BenchOptions& o, const nlohmann::json& j) {
  for (const char* key : {"tokens_per_sec", "step_ms", "flops_per_token", "achieved_tflops",
                          "peak_tflops", "mfu", "peak_memory_mb", "libtorch_matmul_tflops"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<double>(), 0) << key;
  }
  const double tokens = static_cast<double>(o.batch * o.seq);
  EXPECT_NEAR(j["tokens_per_sec"].get<double>(), tokens / j["step_ms"].get<double>() * 1000,
              1e-6 * j["tokens_per_sec"].get<double>());
  EXPECT_NEAR(j["achieved_tflops"].get<double>(),
              j["flops_per_token"].get<double>() * j["tokens_per_sec"].get<double>() / 1e12,
              1e-9 * j["achieved_tflops"].get<double>());
  EXPECT_NEAR(j["mfu"].get<double>(),
              j["achieved_tflops"].get<double>() / j["peak_tflops"].get<double>(),
              1e-9 * j["mfu"].get<double>());
  EXPECT_GE(j["peak_tflops"].get<double>(), j["libtorch_matmul_tflops"].get<double>());
  EXPECT_TRUE(std::isfinite(j["final_loss"].get<double>()));
}

TEST(Bench, OneStepGivesEveryFieldConsistently) {
  for (auto precision : {lmtune::Precision::kFp32, lmtune::Precision::kBf16}) {
    auto o = tiny_shape(precision);
    auto json = lmtune::bench_json(o, lmtune::run_bench(o));
    SCOPED_TRACE(json.dump());
    expect_consistent(o, json);
    EXPECT_EQ(json["precision"], precision == lmtune::Precision::kFp32 ? "fp32" : "bf16");
    EXPECT_EQ(json["device"], "cpu");
    EXPECT_EQ(json["threads"], 1);
  }
}

TEST(Bench, FlopsPerTokenIsSixNPlusAttention) {
  lmtune::GPT2Config config;
  config.n_layer = 2, config.n_head = 2, config.n_embd = 32, config.vocab_size = 100;
  config.n_positions = 16;
  lmtune::GPT2 model(config);
  int64_t n = 0;
  for (const auto& item : model->named_parameters())
    if (item.key() != "wpe.weight") n += item.value().numel();
  // 12 L C T: 12 x 2 x 32 x 16 = 12,288.
  EXPECT_DOUBLE_EQ(lmtune::training_flops_per_token(*model, 16), 6.0 * n + 12288);
}

TEST(Bf16Emulation, OnlyUnderCpuBf16Autocast) {
  auto x = torch::randn({4, 8});
  EXPECT_FALSE(lmtune::emulates_bf16(x));
  lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
  EXPECT_EQ(lmtune::emulates_bf16(x), !lmtune::cpu_has_native_bf16());
}

// The emulated path must give what LibTorch's bf16 autocast gives, forward and backward.
TEST(Bf16Emulation, LinearMatchesNativeAutocast) {
  torch::manual_seed(0);
  auto x = torch::randn({6, 16, 32}, torch::requires_grad());
  auto w = torch::randn({48, 32}, torch::requires_grad());
  auto b = torch::randn({48}, torch::requires_grad());
  auto run = [&](bool ours) {
    lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
    auto y = ours ? lmtune::autocast_linear(x, w, b) : torch::linear(x, w, b);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    auto grads = torch::autograd::grad({y.to(torch::kFloat32).square().sum()}, {x, w, b});
    return std::vector<torch::Tensor>{y.to(torch::kFloat32), grads[0], grads[1], grads[2]};
  };
  auto ours = run(true), native = run(false);
  for (std::size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i].scalar_type(), native[i].scalar_type()) << i;
    // bf16 keeps 8 significant bits: results may differ by a rounding step (2^-8 relative).
    EXPECT_TRUE(torch::allclose(ours[i], native[i], /*rtol=*/2e-2, /*atol=*/2e-2)) << i;
  }
}

TEST(Bf16Emulation, AttentionMatchesNativeAutocast) {
  torch::manual_seed(0);
  auto q = torch::randn({2, 2, 8, 16}), k = torch::randn({2, 2, 8, 16}),
       v = torch::randn({2, 2, 8, 16});
  lmtune::AutocastScope autocast(lmtune::Precision::kBf16, torch::kCPU);
  auto ours = lmtune::autocast_attention(q, k, v, std::nullopt, 0.0, /*causal=*/true);
  auto native = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*causal=*/true);
  EXPECT_EQ(ours.scalar_type(), native.scalar_type());
  EXPECT_TRUE(torch::allclose(ours.to(torch::kFloat32), native.to(torch::kFloat32), 2e-2, 2e-2));
}

}  // namespace
