// Unit tests of the training benchmark (its JSON fields and their arithmetic, not its timings).
// The bf16 emulation it measures has its own file, test_bf16_emulation.cpp.
#include <cmath>

#include <gtest/gtest.h>

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

}  // namespace
