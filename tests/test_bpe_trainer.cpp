// Unit tests of BPE training: merges on corpora small enough to work out by hand (counts,
// overlapping runs, the tie rule), the incremental pair counts against a recount after every
// merge, word counting through each pre-tokenizer, bad options, and the written files read back.
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/io/bpe_trainer.h"
#include "lmtune/io/tokenizer.h"
#include "temp_dir_test.h"

namespace bpe_trainer_test {

using lmtune::BpeTrainer;
using lmtune::BpeTrainingOptions;
using lmtune::TrainedBpe;
using Merges = std::vector<std::pair<std::string, std::string>>;

BpeTrainingOptions options_of(int64_t vocab_size, int64_t min_frequency = 1,
                              std::string pre_tokenizer = "gpt2") {
  BpeTrainingOptions options;
  options.vocab_size = vocab_size;
  options.min_frequency = min_frequency;
  options.pre_tokenizer = std::move(pre_tokenizer);
  options.special_tokens = {};
  return options;
}

TrainedBpe train_on(const std::vector<std::string>& texts, const BpeTrainingOptions& options) {
  BpeTrainer trainer(options);
  for (const auto& text : texts) trainer.add_text(text);
  return trainer.train();
}

// The merges as spellings ("Ġ" is a space).
Merges spelled_merges(const TrainedBpe& bpe) {
  Merges merges;
  for (const auto& [left, right] : bpe.merges)
    merges.emplace_back(bpe.tokens[left], bpe.tokens[right]);
  return merges;
}

int64_t distinct_words_of(const std::string& text, const std::string& pre_tokenizer) {
  BpeTrainer trainer(options_of(300, 1, pre_tokenizer));
  trainer.add_text(text);
  return trainer.distinct_words();
}

// BPE training without incremental counts: every pair of every word recounted before each merge,
// the same rule picking the merge. Slow, and plainly right.
Merges merges_by_recounting(const std::map<std::string, int64_t>& word_counts,
                            const TrainedBpe& trained, std::size_t vocab_size) {
  std::vector<std::string> tokens(trained.tokens.begin(), trained.tokens.begin() + 256);
  std::map<std::string, int32_t> ids;
  for (std::size_t id = 0; id < tokens.size(); ++id) ids[tokens[id]] = static_cast<int32_t>(id);
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [word, count] : word_counts) {
    std::vector<int32_t> symbols;
    for (std::size_t i = 0; i < word.size();) {  // the word in spellings, one byte each
      std::size_t length = static_cast<unsigned char>(word[i]) < 0x80 ? 1 : 2;
      symbols.push_back(ids.at(word.substr(i, length)));
      i += length;
    }
    words.emplace_back(symbols, count);
  }
  Merges merges;
  while (tokens.size() < vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int64_t> counts;
    for (const auto& [symbols, count] : words)
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i)
        counts[{symbols[i], symbols[i + 1]}] += count;
    if (counts.empty()) break;
    auto best = counts.begin();  // the smallest pair first, so `>` keeps it on ties
    for (auto it = counts.begin(); it != counts.end(); ++it)
      if (it->second > best->second) best = it;
    auto [left, right] = best->first;
    std::string spelling = tokens[left] + tokens[right];
    if (!ids.count(spelling)) {
      ids[spelling] = static_cast<int32_t>(tokens.size());
      tokens.push_back(spelling);
    }
    merges.emplace_back(tokens[left], tokens[right]);
    for (auto& [symbols, count] : words) {
      std::vector<int32_t> out;
      for (std::size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
          out.push_back(ids[spelling]);
          ++i;
        } else {
          out.push_back(symbols[i]);
        }
      }
      symbols = out;
    }
  }
  return merges;
}

TEST(BpeTrainer, MergesTheMostFrequentPairFirst) {
  // Words "ab", "Ġab" x2, "Ġcd" x2: (a, b) is seen 3 times, every other pair twice.
  TrainedBpe bpe = train_on({"ab ab ab cd cd"}, options_of(256 + 4));
  EXPECT_EQ(spelled_merges(bpe), (Merges{{"a", "b"}, {"c", "d"}, {"Ġ", "ab"}, {"Ġ", "cd"}}));
  // After (a, b), the three pairs left are seen twice each: (c, d) has the smallest left id ('c'
  // before 'Ġ', U+0120), then (Ġ, ab) beats (Ġ, cd) because "ab" (id 256) came before "cd".
  EXPECT_EQ(bpe.tokens.size(), 256u + 4);
  EXPECT_EQ(bpe.tokens.back(), "Ġcd");
}

TEST(BpeTrainer, CountsOverlappingPairsButMergesThemLeftToRight) {
  // "aaaa" holds (a, a) three times; merged left to right it becomes "aa aa".
  TrainedBpe bpe = train_on({"aaaa"}, options_of(256 + 5));
  EXPECT_EQ(spelled_merges(bpe), (Merges{{"a", "a"}, {"aa", "aa"}}));
  EXPECT_EQ(bpe.tokens.back(), "aaaa");
}

TEST(BpeTrainer, StopsAtTheVocabularySizeOrTheMinimumFrequency) {
  EXPECT_EQ(train_on({"ab ab ab cd cd"}, options_of(256 + 1)).merges.size(), 1u);
  EXPECT_EQ(spelled_merges(train_on({"ab ab ab cd cd"}, options_of(1000, 3))),
            (Merges{{"a", "b"}}));
}

TEST(BpeTrainer, GivesSpecialTokensTheFirstIdsAndNeverCountsThem) {
  BpeTrainingOptions options = options_of(300);
  options.special_tokens = {"<|endoftext|>", "<pad>"};
  BpeTrainer trainer(options);
  trainer.add_text("xy<|endoftext|>xy<pad>");
  EXPECT_EQ(trainer.words_seen(), 2);
  EXPECT_EQ(trainer.distinct_words(), 1);
  TrainedBpe bpe = trainer.train();
  EXPECT_EQ(bpe.tokens[0], "<|endoftext|>");
  EXPECT_EQ(bpe.tokens[1], "<pad>");
  EXPECT_EQ(bpe.tokens[2], "!");  // the bytes follow in code-point order of their spellings
  EXPECT_EQ(spelled_merges(bpe), (Merges{{"x", "y"}}));
}

TEST(BpeTrainer, CutsWordsAsEachPreTokenizerDoes) {
  EXPECT_EQ(distinct_words_of("12345", "gpt2"), 1);    // a digit run is one word
  EXPECT_EQ(distinct_words_of("12345", "llama3"), 2);  // "123", "45"
  EXPECT_EQ(distinct_words_of("12345", "qwen2"), 5);   // one digit each
  EXPECT_EQ(distinct_words_of("12345", "smollm"), 5);
  // Qwen2 composes characters first (NFC): "é" written as e + U+0301 is the same word as "é";
  // GPT-2's pattern, without a normalizer, cuts the accent off the "e" as a symbol of its own.
  EXPECT_EQ(distinct_words_of("e\xCC\x81\n\xC3\xA9", "qwen2"), 2);  // "é", "\n"
  EXPECT_EQ(distinct_words_of("e\xCC\x81\n\xC3\xA9", "gpt2"), 4);   // "e", U+0301, "\n", "é"
}

TEST(BpeTrainer, IncrementalCountsLearnWhatRecountingEveryMergeLearns) {
  // Random words over a small alphabet repeat pairs often, tie often, and reach the same spelling
  // through different merges: every case the incremental bookkeeping must get right.
  std::mt19937 rng(7);
  std::string text;
  std::map<std::string, int64_t> word_counts;  // as GPT-2's pattern cuts the text
  char separator = 0;
  for (int w = 0; w < 400; ++w) {
    std::string letters;
    for (int length = 1 + static_cast<int>(rng() % 7); length > 0; --length)
      letters += "abcab"[rng() % 5];
    ++word_counts[std::string(separator == ' ' ? "Ġ" : "") +
                  letters];  // a space joins the word after it
    separator = rng() % 4 ? ' ' : '\n';
    if (separator == '\n') ++word_counts["Ċ"];  // a line break before a letter stands alone
    text += letters + separator;
  }
  if (separator == ' ') ++word_counts["Ġ"];
  BpeTrainingOptions options = options_of(256 + 120);
  BpeTrainer trainer(options);
  trainer.add_text(text);
  TrainedBpe bpe = trainer.train();
  EXPECT_EQ(trainer.distinct_words(), static_cast<int64_t>(word_counts.size()));
  EXPECT_EQ(spelled_merges(bpe), merges_by_recounting(word_counts, bpe, options.vocab_size));
  EXPECT_GE(bpe.merges.size(), 20u);
}

TEST(BpeTrainer, RefusesBadOptions) {
  BpeTrainingOptions unknown = options_of(300, 1, "bert");
  EXPECT_THROW(BpeTrainer{unknown}, lmtune::UsageError);
  BpeTrainingOptions small = options_of(200);
  EXPECT_THROW(BpeTrainer{small}, lmtune::UsageError);
  BpeTrainingOptions repeated = options_of(300);
  repeated.special_tokens = {"<s>", "<s>"};
  EXPECT_THROW(BpeTrainer{repeated}, lmtune::UsageError);
  repeated.special_tokens = {"<s>"};
  repeated.vocab_size = 256;  // one id short for the special token
  EXPECT_THROW(BpeTrainer{repeated}, lmtune::UsageError);
}

class BpeTrainerFiles : public TempDirTest {};

TEST_F(BpeTrainerFiles, WrittenTokenizerEncodesTheTrainingWordsWhole) {
  BpeTrainingOptions options = options_of(300, 2);
  options.special_tokens = {"<|endoftext|>"};
  const std::string text = "hello world, hello tokenizer; hello 123 world\n\n  émoji 🙂🙂";
  TrainedBpe bpe = train_on({text, text}, options);
  lmtune::write_trained_tokenizer(bpe, dir_);
  for (const char* file : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"})
    EXPECT_TRUE(std::filesystem::is_regular_file(dir_ / file)) << file;
  auto tokenizer = lmtune::load_tokenizer(dir_);
  EXPECT_EQ(tokenizer->vocab_size(), static_cast<int64_t>(bpe.tokens.size()));
  EXPECT_EQ(tokenizer->eos_id(), 0);
  std::vector<int64_t> hello = tokenizer->encode(" hello");
  ASSERT_EQ(hello.size(), 1u);
  EXPECT_EQ(bpe.tokens[hello[0]], "Ġhello");
  EXPECT_EQ(tokenizer->encode("<|endoftext|>"), (std::vector<int64_t>{0}));
  const std::string unseen = "unseen \xF0\x9F\x98\x80 text\t\t with bytes \xFF\xFE";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(text + unseen)), text + unseen);
}

}  // namespace bpe_trainer_test
