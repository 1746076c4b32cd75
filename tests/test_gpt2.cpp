// Unit tests of the GPT-2 module, its HF-layout save/load, the KV cache and generation.
#include <fstream>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/infer/generate.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/gpt2.h"
#include "temp_dir_test.h"
#include "tiny_gpt2.h"

namespace fs = std::filesystem;
using lmtune::GPT2;

namespace {

GPT2 tiny_model(bool tied = true, uint64_t seed = 7) {
  TinyShape shape;
  shape.tied = tied;
  return tiny_gpt2(shape, /*dropout=*/0.1, seed);  // GPT2Config's default dropout
}

class GPT2Test : public TempDirTest {
 protected:
  std::string load_error(const fs::path& dir) {
    try {
      lmtune::load_gpt2(dir);
    } catch (const lmtune::InputError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(GPT2Test, ParameterNamesAreHuggingFaces) {
  auto names = tiny_model()->named_parameters().keys();
  for (const char* expected :
       {"wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
        "h.0.attn.c_proj.bias", "h.1.mlp.c_fc.weight", "h.1.mlp.c_proj.weight", "ln_f.bias"})
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  EXPECT_EQ(names.size(), 2u + 12u * 2 + 2u);
}

TEST_F(GPT2Test, SaveThenLoadIsBitIdentical) {
  for (bool tied : {true, false}) {
    GPT2 model = tiny_model(tied);
    fs::path out = dir_ / (tied ? "tied" : "untied");
    lmtune::save_gpt2(model, out);
    GPT2 loaded = lmtune::load_gpt2(out);
    auto a = model->named_parameters(), b = loaded->named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (const auto& item : a) EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key();
    lmtune::SafetensorsFile file(out / "model.safetensors");
    EXPECT_EQ(file.find("lm_head.weight") != nullptr, !tied);
    // Conv1D orientation on disk: c_attn is (in, out) = (C, 3C).
    EXPECT_EQ(file.find("transformer.h.0.attn.c_attn.weight")->shape,
              (std::vector<int64_t>{16, 48}));
  }
}

TEST_F(GPT2Test, KVCacheGivesTheSameLogits) {
  GPT2 model = tiny_model();
  model->eval();
  torch::NoGradGuard no_grad;
  auto idx = torch::randint(50, {2, 12}, torch::kLong);
  auto full = model->forward(idx);  // (2, 12, V)
  lmtune::KVCache cache;
  namespace I = torch::indexing;
  auto first = model->forward(idx.index({I::Slice(), I::Slice(0, 5)}), &cache);
  auto middle =
      model->forward(idx.index({I::Slice(), I::Slice(5, 11)}), &cache);  // several new tokens
  auto last = model->forward(idx.index({I::Slice(), I::Slice(11, 12)}), &cache);  // one new token
  auto stepped = torch::cat({first, middle, last}, 1);
  EXPECT_TRUE(torch::allclose(full, stepped, /*rtol=*/1e-5, /*atol=*/1e-5));
  EXPECT_EQ(cache.length(), 12);
}

TEST_F(GPT2Test, VocabPaddingGivesTheSameLogitsLossAndGradients) {
  auto run = [](int64_t padding, bool tied) {
    GPT2 model = tiny_gpt2(
        [&] {
          TinyShape shape;  // vocabulary 50: padded to 64 with a multiple of 64, to 51 with 17
          shape.tied = tied;
          return shape;
        }(),
        /*dropout=*/0.0, /*seed=*/3);
    model->set_vocab_padding(padding);
    auto batch = random_batch(50, 2, 12);
    auto logits = model->forward(batch.inputs);  // (B, T, V)
    lmtune::lm_loss(logits, batch.targets).backward();
    std::map<std::string, torch::Tensor> grads;
    for (const auto& p : model->named_parameters()) grads[p.key()] = p.value().grad();
    return std::make_pair(logits.detach(), grads);
  };
  for (bool tied : {true, false}) {
    const auto [plain, plain_grads] = run(0, tied);
    for (int64_t padding : {64, 17, 10, 1}) {  // 10 divides 50, and 1 everything: no padding
      const auto [padded, padded_grads] = run(padding, tied);
      ASSERT_EQ(padded.sizes(), plain.sizes());
      EXPECT_TRUE(torch::allclose(padded, plain, 1e-6, 1e-6)) << padding;
      ASSERT_EQ(padded_grads.size(), plain_grads.size());
      for (const auto& [name, grad] : plain_grads)
        EXPECT_TRUE(torch::allclose(padded_grads.at(name), grad, 1e-5, 1e-7))
            << name << " with padding " << padding << ", tied " << tied;
    }
  }
}

TEST_F(GPT2Test, GreedyWithCacheEqualsGreedyWithout) {
  GPT2 model = tiny_model();
  lmtune::GenerateOptions options;
  options.temperature = 0;
  options.max_new_tokens = 20;
  auto cached = lmtune::generate(model, {1, 2, 3}, options);
  options.use_cache = false;
  auto uncached = lmtune::generate(model, {1, 2, 3}, options);
  EXPECT_EQ(cached, uncached);
  EXPECT_EQ(cached.size(), 20u);
}

TEST_F(GPT2Test, SamplingIsReproducibleBySeed) {
  GPT2 model = tiny_model();
  lmtune::GenerateOptions options;
  options.max_new_tokens = 25;
  options.top_k = 20;
  options.top_p = 0.95;
  auto a = lmtune::generate(model, {4, 5}, options);
  auto b = lmtune::generate(model, {4, 5}, options);
  options.seed = 99;
  auto c = lmtune::generate(model, {4, 5}, options);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST_F(GPT2Test, GenerationStopsAtTheStopTokenAndTheContext) {
  GPT2 model = tiny_model();
  lmtune::GenerateOptions options;
  options.temperature = 0;
  options.max_new_tokens = 100;
  auto greedy = lmtune::generate(model, {1}, options);
  EXPECT_EQ(greedy.size(), 31u);  // context of 32 minus the prompt token
  options.stop_ids = {greedy[3]};
  auto stopped = lmtune::generate(model, {1}, options);
  EXPECT_EQ(stopped.back(), greedy[3]);
  EXPECT_LE(stopped.size(), 4u);
}

TEST_F(GPT2Test, BadModelFilesNameTheFileAndTensor) {
  GPT2 model = tiny_model();
  lmtune::save_gpt2(model, dir_);
  fs::path weights = dir_ / "model.safetensors";
  lmtune::SafetensorsFile original(weights);
  lmtune::NamedTensors tensors;
  for (const auto& e : original.entries()) tensors.emplace_back(e.name, original.read(e));

  auto without = tensors;
  without.erase(without.begin());
  lmtune::write_safetensors(weights, without);
  EXPECT_NE(load_error(dir_).find("missing tensor"), std::string::npos);

  auto reshaped = tensors;
  for (auto& [name, t] : reshaped)
    if (name == "transformer.ln_f.weight") t = torch::ones({17});
  lmtune::write_safetensors(weights, reshaped);
  EXPECT_NE(load_error(dir_).find("tensor 'transformer.ln_f.weight' has shape [17], expected [16]"),
            std::string::npos);

  auto extra = tensors;
  extra.emplace_back("transformer.h.9.mlp.c_fc.weight", torch::ones({2}));
  extra.emplace_back("transformer.h.0.attn.bias",
                     torch::ones({1, 1, 32, 32}));  // ignored HF buffer
  lmtune::write_safetensors(weights, extra);
  EXPECT_NE(load_error(dir_).find("unexpected tensor 'transformer.h.9.mlp.c_fc.weight'"),
            std::string::npos);

  std::ofstream(dir_ / "config.json") << R"({"n_layer": 2, "n_head": 2, "n_embd": 16})";
  EXPECT_NE(load_error(dir_).find("config.json: missing required key 'n_positions'"),
            std::string::npos);
  fs::remove(dir_ / "config.json");
  EXPECT_NE(load_error(dir_).find("cannot read the model's config.json"), std::string::npos);
}

}  // namespace
