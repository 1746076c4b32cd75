// Unit tests of generation: batched decoding against one prompt at a time (greedy and sampled,
// GPT-2 and Llama), rows that stop early or reach the context, and the streamed text of a
// continuation.
#include <gtest/gtest.h>

#include "lmtune/infer/generate.h"
#include "lmtune/model/llama.h"
#include "tiny_gpt2.h"
#include "tiny_llama.h"

namespace {

using PromptIds = std::vector<std::vector<int64_t>>;

lmtune::CausalLM generation_test_model(const std::string& arch) {
  if (arch == "gpt2") return tiny_gpt2(TinyShape{}, /*dropout=*/0.0, /*seed=*/7);
  lmtune::LlamaConfig c = tiny_llama_config();
  c.initializer_range = 0.5;  // peaked distributions: greedy ties are out of the question
  lmtune::Llama model(c);
  model->init_weights(/*seed=*/7);
  return model;
}

// Prompts of very different lengths; the last leaves room for 4 tokens in a context of 32.
const PromptIds kMixedPrompts = {{3},
                                 {4, 9, 1, 7, 30, 2, 2, 11, 5, 41, 8, 13, 17, 6, 21, 1, 9},
                                 {10, 20, 30},
                                 {5, 6, 7, 8, 9, 10, 11},
                                 std::vector<int64_t>(28, 12)};

PromptIds decode_one_at_a_time(const lmtune::CausalLM& model, const PromptIds& prompts,
                               const lmtune::GenerateOptions& options) {
  PromptIds out;
  for (const auto& prompt : prompts) out.push_back(lmtune::generate(model, prompt, options));
  return out;
}

class BatchedGeneration : public testing::TestWithParam<std::string> {};

TEST_P(BatchedGeneration, GreedyBatchesGiveTheTokensOfOnePromptAtATime) {
  auto model = generation_test_model(GetParam());
  lmtune::GenerateOptions options;
  options.temperature = 0;
  options.max_new_tokens = 8;
  const PromptIds alone = decode_one_at_a_time(model, kMixedPrompts, options);
  EXPECT_EQ(alone.back().size(), 4u);  // stopped by the context
  EXPECT_EQ(alone[0].size(), 8u);
  EXPECT_EQ(lmtune::generate_batch(model, kMixedPrompts, options), alone);
  options.use_cache = false;  // the reference: whole sequences, no cache, no padding
  EXPECT_EQ(decode_one_at_a_time(model, kMixedPrompts, options), alone);
}

TEST_P(BatchedGeneration, ARowThatStopsEarlyLeavesTheOthersAsTheyWere) {
  auto model = generation_test_model(GetParam());
  lmtune::GenerateOptions options;
  options.temperature = 0;
  options.max_new_tokens = 8;
  const auto free_run = decode_one_at_a_time(model, kMixedPrompts, options);
  // A token early in the longest prompt's continuation that some other prompt's lacks.
  auto lacks = [&](int64_t token) {
    return std::any_of(free_run.begin(), free_run.end(), [&](const auto& tokens) {
      return tokens.size() == 8 && std::find(tokens.begin(), tokens.end(), token) == tokens.end();
    });
  };
  const auto stop = std::find_if(free_run[1].begin(), free_run[1].begin() + 4, lacks);
  ASSERT_NE(stop, free_run[1].begin() + 4);
  options.stop_ids = {*stop};
  const auto stopped = decode_one_at_a_time(model, kMixedPrompts, options);
  ASSERT_LE(stopped[1].size(), 4u);
  ASSERT_TRUE(std::any_of(stopped.begin(), stopped.end(), [](const auto& tokens) {
    return tokens.size() == 8;
  })) << "another row must go on past the stop";
  auto callbacks = PromptIds(kMixedPrompts.size());
  const auto batched = lmtune::generate_batch(
      model, kMixedPrompts, options,
      [&](std::size_t prompt, int64_t token) { callbacks[prompt].push_back(token); });
  EXPECT_EQ(batched, stopped);
  EXPECT_EQ(callbacks, stopped);  // nothing reported for a row after it stopped
}

TEST_P(BatchedGeneration, SampledRowsDependOnTheSeedAloneNotOnTheBatch) {
  auto model = generation_test_model(GetParam());
  lmtune::GenerateOptions options;
  options.max_new_tokens = 8;
  options.temperature = 0.9;
  options.top_k = 20;
  options.top_p = 0.95;
  const auto alone = decode_one_at_a_time(model, kMixedPrompts, options);
  EXPECT_EQ(lmtune::generate_batch(model, kMixedPrompts, options), alone);
  const PromptIds pair = {kMixedPrompts[2], kMixedPrompts[1]};
  EXPECT_EQ(lmtune::generate_batch(model, pair, options), (PromptIds{alone[2], alone[1]}));
  options.seed = 99;
  EXPECT_NE(lmtune::generate_batch(model, kMixedPrompts, options), alone);
}

INSTANTIATE_TEST_SUITE_P(Architectures, BatchedGeneration, testing::Values("gpt2", "llama"));

// Token i is byte i; with `byte_fallback`, a run of bytes that is not UTF-8 decodes to U+FFFD
// as SentencePiece's byte tokens do, else the bytes are kept as they are (byte-level BPE).
class ByteStreamTokenizer : public lmtune::Tokenizer {
 public:
  explicit ByteStreamTokenizer(bool byte_fallback) : byte_fallback_(byte_fallback) {}
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string bytes;
    for (int64_t id : ids) bytes += static_cast<char>(id);
    return byte_fallback_ ? lmtune::valid_utf8(bytes) : bytes;
  }
  int64_t vocab_size() const override { return 257; }
  std::optional<int64_t> eos_id() const override { return 256; }
  void save(const std::filesystem::path&) const override {}

 private:
  bool byte_fallback_;
};

TEST(ContinuationStream, PrintsWholeCharactersAndJoinsToTheContinuationText) {
  // Two-, three- and four-byte characters, a stray continuation byte, a lead byte followed by
  // ASCII, and a character cut short at the end.
  const std::string text = "caf\xC3\xA9 \xE2\x82\xAC\xF0\x9F\x98\x80 \x80x\xE2y \xF0\x9F\x98";
  for (bool byte_fallback : {false, true}) {
    ByteStreamTokenizer tokenizer(byte_fallback);
    lmtune::ContinuationStream stream(tokenizer, {256});
    std::vector<int64_t> ids = tokenizer.encode(text);
    ids.push_back(256);  // the stop id
    std::string printed;
    std::vector<std::string> pieces;
    for (int64_t id : ids) {
      pieces.push_back(stream.add(id));
      printed += pieces.back();
      EXPECT_EQ(lmtune::valid_utf8(printed), printed) << "a character printed in part";
    }
    EXPECT_EQ(pieces[3], "") << "the first byte of é is held back";
    EXPECT_EQ(pieces[4], "\xC3\xA9");
    printed += stream.finish();
    EXPECT_EQ(printed, lmtune::continuation_text(tokenizer, ids, {256})) << byte_fallback;
    EXPECT_EQ(printed, lmtune::valid_utf8(text));
  }
}

}  // namespace
