// The memory planner (lmtune/train/plan.h): parts counted on known shapes, a census on the meta
// device that allocates nothing, levers that lower the prediction, train.micro_batch_size: auto.
#include <algorithm>
#include <fstream>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/lora.h"
#include "lmtune/train/plan.h"
#include "temp_dir_test.h"
#include "tiny_gpt2.h"

namespace lmtune {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

class Plan : public TempDirTest {
 protected:
  // A config of `tree` (JSON) with the keys every test needs filled in.
  Config config(nlohmann::json tree, const std::vector<Override>& overrides = {}) {
    tree["data"]["train"] = (dir_ / "train.txt").string();
    if (!tree["data"].contains("seq_len")) tree["data"]["seq_len"] = 64;
    tree["run"]["device"] = "cpu";
    std::ofstream(dir_ / "config.json") << tree.dump();
    return load_config(dir_ / "config.json", overrides);
  }

  // A random GPT-2: C 64, 4 heads, 2 blocks, vocabulary 1000, 128 positions.
  Config gpt2(const std::vector<Override>& overrides = {}) {
    return config({{"model",
                    {{"init", "random"},
                     {"tokenizer", dir_.string()},
                     {"n_layer", 2},
                     {"n_head", 4},
                     {"n_embd", 64},
                     {"n_positions", 128},
                     {"vocab_size", 1000}}},
                   {"train", {{"micro_batch_size", 4}, {"precision", "fp32"}}}},
                  overrides);
  }

  // A pretrained Llama-family model directory (config.json only): C 64, F 128, 4 query heads of
  // 16 over 2 key/value heads, 3 layers, vocabulary 1000, embeddings tied.
  std::filesystem::path llama_dir() {
    const auto dir = dir_ / "llama";
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << nlohmann::json{
        {"model_type", "llama"},      {"vocab_size", 1000},
        {"hidden_size", 64},          {"intermediate_size", 128},
        {"num_hidden_layers", 3},     {"num_attention_heads", 4},
        {"num_key_value_heads", 2},   {"max_position_embeddings", 256},
        {"tie_word_embeddings", true}}.dump();
    return dir;
  }

  Config llama(nlohmann::json extra = nlohmann::json::object(),
               const std::vector<Override>& overrides = {}) {
    nlohmann::json tree = {{"model", {{"path", llama_dir().string()}}},
                           {"train", {{"micro_batch_size", 4}, {"precision", "fp32"}}}};
    tree.update(extra);
    return config(tree, overrides);
  }

  static DeviceMemory cpu(double available_mb = 1e6) {
    DeviceMemory memory;
    memory.runtime_mb = 400;
    memory.available_mb = available_mb;
    memory.native_bf16 = false;
    return memory;
  }

  static double part(const MemoryPlan& plan, const std::string& key, bool peak = false) {
    for (const auto& p : plan.parts)
      if (p.key == key) return peak ? p.peak_mb : p.size_mb;
    ADD_FAILURE() << "no part " << key;
    return 0;
  }
};

TEST_F(Plan, CountsGpt2PartsFromItsShape) {
  const Config c = gpt2();
  const ModelCensus census = census_of(c, cpu());
  const int64_t C = 64, V = 1000, P = 128, L = 2;
  const int64_t block =
      2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C);
  const int64_t parameters = V * C + P * C + L * block + 2 * C;
  EXPECT_EQ(census.parameters, parameters);
  EXPECT_EQ(census.trainable, parameters);
  EXPECT_EQ(census.weight_bytes, 4 * parameters);
  EXPECT_EQ(census.output_weights, V * C);  // tied: the token embedding

  const MemoryPlan plan = plan_memory(c, census, cpu());
  EXPECT_DOUBLE_EQ(part(plan, "weights"), 4.0 * parameters / kMiB);
  EXPECT_DOUBLE_EQ(part(plan, "gradients"), 4.0 * parameters / kMiB);
  // Two fp32 moments per parameter and an fp32 step count per tensor.
  EXPECT_DOUBLE_EQ(part(plan, "optimizer"),
                   (8.0 * parameters + 4.0 * census.trainable_tensors) / kMiB);
  EXPECT_DOUBLE_EQ(part(plan, "runtime"), 400);
  // Dropout 0.1 (GPT-2's default) sends attention to the CPU's math kernel: per token and block,
  // 18 C-wide fp32 tensors and 3 (H, T) ones; outside the blocks the last block's output and the
  // embedding dropout's mask.
  const double N = 4 * 64, H = 4, T = 64;
  const double expected = N * 4 * (L * (18 * C + 3 * H * T) + 2 * C);
  EXPECT_DOUBLE_EQ(part(plan, "activations"), expected / kMiB);
  // The plain loss: fp32 logits, log-softmax and their gradients, plus the head's input.
  EXPECT_EQ(plan.loss_chunk_tokens, 0);
  EXPECT_DOUBLE_EQ(part(plan, "loss"), (12.0 * V * N + 4.0 * C * N) / kMiB);
  double sum = 0;
  for (const auto& p : plan.parts) sum += p.peak_mb;
  EXPECT_NEAR(plan.total_mb, sum, 1e-9);
}

TEST_F(Plan, CountsLoraAdaptersAndQuantizedWeightsOnALlama) {
  const int64_t C = 64, F = 128, HD = 64, KD = 32, V = 1000, L = 3, r = 4;
  const Config lora = llama({{"lora", {{"r", r}, {"dropout", 0.0}}}});
  const ModelCensus census = census_of(lora, cpu());
  // PEFT's default targets for the Llama family: q_proj and v_proj.
  const int64_t adapters = L * (r * (C + HD) + r * (C + KD));
  EXPECT_EQ(census.adapted_layers, 2 * L);
  EXPECT_EQ(census.adapter_parameters, adapters);
  EXPECT_EQ(census.trainable, adapters);
  const int64_t projections = L * (C * HD + 2 * C * KD + HD * C + 3 * C * F);
  const int64_t others = V * C + L * 2 * C + C;  // embedding, norms
  EXPECT_EQ(census.parameters, projections + others);

  const ModelCensus int8 =
      census_of(llama({{"lora", {{"r", r}}}}, {{"model.quantize", "int8"}}), cpu());
  const int64_t rows = L * (HD + 2 * KD + C + 2 * F + C);
  EXPECT_EQ(int8.weight_bytes, projections + 4 * rows + 4 * others);
  const ModelCensus nf4 =
      census_of(llama({{"lora", {{"r", r}}}}, {{"model.quantize", "nf4"}}), cpu());
  // Every projection here is a multiple of 64 values: half a byte each, an fp32 absmax per 64.
  EXPECT_EQ(nf4.weight_bytes, projections / 2 + 4 * (projections / 64) + 4 * others);
  EXPECT_EQ(nf4.quantized_weights, projections);
}

TEST_F(Plan, AnAdapterToContinueIsCountedFromItsFile) {
  GPT2 model = tiny_gpt2({}, 0.0, 1);
  save_hf_model(*model, dir_ / "base");
  LoraSpec spec;
  spec.r = 3;
  spec.target_modules = {"c_attn", "c_fc"};
  const AdapterSummary summary = attach_lora(*model, spec);
  save_adapter(*model, spec, summary, dir_ / "adapter", (dir_ / "base").string());
  const Config c = config({{"model", {{"path", (dir_ / "base").string()}}},
                           {"data", {{"seq_len", 16}}},
                           {"lora", {{"adapter", (dir_ / "adapter").string()}}}});
  const ModelCensus census = census_of(c, cpu());
  EXPECT_EQ(census.adapted_layers, 4);
  EXPECT_EQ(census.adapter_parameters, summary.adapter_parameters);
  EXPECT_EQ(census.trainable, summary.adapter_parameters);
}

TEST_F(Plan, TheCensusOfASevenBillionModelAllocatesNothing) {
  const auto dir = dir_ / "big";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << nlohmann::json{
      {"model_type", "llama"},       {"vocab_size", 32000},
      {"hidden_size", 4096},         {"intermediate_size", 11008},
      {"num_hidden_layers", 32},     {"num_attention_heads", 32},
      {"num_key_value_heads", 32},   {"max_position_embeddings", 4096},
      {"tie_word_embeddings", false}}.dump();
  const Config c = config({{"model", {{"path", dir.string()}}}, {"lora", {{"r", 16}}}});
  const double rss_before = measure_device_memory(torch::kCPU).runtime_mb;
  const ModelCensus census = census_of(c, cpu());
  EXPECT_LT(measure_device_memory(torch::kCPU).runtime_mb - rss_before, 100);
  EXPECT_EQ(census.parameters, int64_t{6738415616});  // Llama 2 7B
  EXPECT_EQ(census.adapter_parameters, 32 * 2 * 16 * (4096 + 4096));
  const MemoryPlan plan = plan_memory(c, census, cpu());
  EXPECT_GT(part(plan, "weights"), 25000);  // 6.7 G fp32 parameters, on paper only
}

TEST_F(Plan, EachLeverLowersThePrediction) {
  const Config c =
      llama(nlohmann::json::object(), {{"train.micro_batch_size", "8"}, {"data.seq_len", "128"}});
  const DeviceMemory small = cpu(/*available_mb=*/420);
  const ModelCensus census = census_of(c, small);
  const MemoryPlan plan = plan_memory(c, census, small);
  const std::vector<Lever> levers = plan_levers(c, census, small);
  std::vector<std::string> names;
  for (const auto& lever : levers) {
    names.push_back(lever.what);
    EXPECT_LT(lever.total_mb, plan.total_mb) << lever.what;
    EXPECT_FALSE(lever.overrides.empty()) << lever.what;
  }
  ASSERT_GE(levers.size(), 5u);
  EXPECT_EQ(names.back(), "all of the above");
  EXPECT_NE(lever_flags(levers.front()).find("--set train.micro_batch_size="), std::string::npos);
}

TEST_F(Plan, CheckpointingAndTheChunkedLossLowerWhatTheyTarget) {
  const Config plain = gpt2();
  const ModelCensus census = census_of(plain, cpu());
  const MemoryPlan base = plan_memory(plain, census, cpu());
  Config checkpointed = plain;
  checkpointed.model.gradient_checkpointing = true;
  EXPECT_LT(part(plan_memory(checkpointed, census, cpu()), "activations"),
            part(base, "activations") / 4);
  Config chunked = plain;
  chunked.train.chunked_loss = ChunkedLoss::kOn;
  chunked.train.loss_chunk_tokens = 16;
  EXPECT_LT(part(plan_memory(chunked, census, cpu()), "loss"), part(base, "loss"));
}

// train.fused_loss: the micro-batch's logits at once, their gradient written over them; in bf16 on
// a GPU (the kernel), in place in fp32 on the CPU: below the plain loss's 12 bytes per logit.
TEST_F(Plan, TheFusedLossHoldsEachLogitOnce) {
  DeviceMemory gpu = cpu();
  gpu.device = torch::Device(torch::kCUDA, 0);  // nothing is allocated: a census and arithmetic
  for (const DeviceMemory& memory : {cpu(), gpu}) {
    Config plain = gpt2();
    plain.train.precision = memory.device.is_cuda() ? Precision::kBf16 : Precision::kFp32;
    plain.train.chunked_loss = ChunkedLoss::kOff;
    Config fused = plain;
    fused.train.fused_loss = true;
    const ModelCensus census = census_of(plain, memory);
    const MemoryPlan without = plan_memory(plain, census, memory);
    const MemoryPlan with = plan_memory(fused, census, memory);
    SCOPED_TRACE(memory.device.str());
    EXPECT_LT(part(with, "loss"), part(without, "loss") / 2);
    const auto loss = std::find_if(with.parts.begin(), with.parts.end(),
                                   [](const auto& p) { return p.key == "loss"; });
    ASSERT_NE(loss, with.parts.end());
    EXPECT_EQ(loss->label, "logits and loss (fused, the micro-batch at once)");
  }
}

TEST_F(Plan, AutoPicksTheLargestMicroBatchThatFitsTheBudget) {
  Config c = gpt2({{"train.micro_batch_size", "auto"}, {"train.grad_accum_steps", "2"}});
  ASSERT_EQ(c.train.micro_batch_size, kAutoMicroBatch);
  const ModelCensus census = census_of(c, cpu());
  auto plan_at = [&](int64_t micro) {
    Config fixed = c;
    fixed.train.micro_batch_size = micro;
    return plan_memory(fixed, census, cpu()).total_mb;
  };
  // A budget between micro-batches 4 and 8 (of the step's 2 x 8 = 16 sequences) at 90%.
  const double budget = (plan_at(4) + plan_at(8)) / 2 / kAutoMemoryShare;
  const MicroBatchChoice choice = choose_micro_batch(c, census, cpu(budget));
  EXPECT_TRUE(choice.fits);
  EXPECT_EQ(choice.micro_batch_size, 4);
  EXPECT_EQ(choice.grad_accum_steps, 4);
  EXPECT_LE(choice.plan.total_mb, kAutoMemoryShare * budget);

  const MicroBatchChoice roomy = choose_micro_batch(c, census, cpu(1e6));
  EXPECT_EQ(roomy.micro_batch_size, 16);
  EXPECT_EQ(roomy.grad_accum_steps, 1);

  const MicroBatchChoice none = choose_micro_batch(c, census, cpu(1));
  EXPECT_FALSE(none.fits);
  EXPECT_EQ(none.micro_batch_size, 1);
  EXPECT_EQ(none.grad_accum_steps, 16);
}

TEST_F(Plan, AutoIsReadFromFilesAndSetAndWrittenBackAsAuto) {
  const Config c = gpt2({{"train.micro_batch_size", "auto"}});
  EXPECT_EQ(c.train.micro_batch_size, kAutoMicroBatch);
  EXPECT_EQ(config_to_json(c)["train"]["micro_batch_size"], "auto");
  EXPECT_EQ(config_to_json(gpt2())["train"]["micro_batch_size"], 4);
  try {
    gpt2({{"train.micro_batch_size", "most"}});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("expected an integer or auto, got string \"most\""),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(gpt2({{"train.micro_batch_size", "0"}}), ConfigError);  // auto is spelled auto
}

TEST_F(Plan, TheJsonLineCarriesThePartsTotalAndFit) {
  const Config c = gpt2();
  const MemoryPlan plan = plan_memory(c, census_of(c, cpu()), cpu());
  const nlohmann::json line = plan_json(plan, cpu(plan.total_mb - 1));
  EXPECT_FALSE(line["fits"].get<bool>());
  EXPECT_TRUE(plan_json(plan, cpu(plan.total_mb + 1))["fits"].get<bool>());
  double sum = 0;
  for (const auto& [key, mb] : line["parts"].items()) sum += mb.get<double>();
  EXPECT_NEAR(sum, line["total_mb"].get<double>(), 0.5);
  EXPECT_EQ(line["micro_batch_size"], 4);
}

TEST_F(Plan, AnOutOfMemoryStepIsOneLineWithThePlansAdvice) {
  const Config c = gpt2();
  const Error error = out_of_memory_error(c, torch::kCPU, /*step=*/3);
  const std::string message = error.what();
  EXPECT_EQ(error.exit_code(), kExitRuntime);
  EXPECT_EQ(message.find('\n'), std::string::npos);
  EXPECT_EQ(message.rfind("step 3: out of memory on cpu (micro-batch 4 x 64 tokens)", 0), 0u)
      << message;
  EXPECT_NE(message.find("lmtune plan predicts"), std::string::npos) << message;
  EXPECT_NE(message.find("the last one is untouched"), std::string::npos) << message;
}

}  // namespace
}  // namespace lmtune
