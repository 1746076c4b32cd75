// Byte-level BPE training: word counts, then merges learned with incremental pair counts.
#include "lmtune/io/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <numeric>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "byte_alphabet.h"
#include "lmtune/core/errors.h"
#include "lmtune/io/safetensors.h"
#include "pre_tokenizer.h"
#include "special_tokens.h"
#include "text_normalizer.h"
#include "tokenizer_files.h"
#include "tokenizer_json.h"

namespace lmtune {
using nlohmann::json;

namespace {

// The largest vocabulary trained: ids past it are refused when tokenizer files are read.
constexpr int64_t kMaxTrainedVocab = int64_t{1} << 24;

json byte_level_step(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

json isolating_split(const char* pattern) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", pattern}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

json sequence_of(json first, json second) {
  return {{"type", "Sequence"}, {"pretokenizers", json::array({first, second})}};
}

// tokenizer.json's normalizer and pre_tokenizer for each pre-tokenizer name, as the model families
// that use them write them: training reads them back through the same code as encoding does.
struct TrainingPipeline {
  json normalizer;
  json pre_tokenizer;
};

TrainingPipeline pipeline_of(const std::string& name) {
  if (name == "gpt2") return {nullptr, byte_level_step(/*use_regex=*/true)};
  if (name == "llama3")
    return {nullptr, sequence_of(isolating_split(kLlama3SplitPattern), byte_level_step(false))};
  if (name == "qwen2")
    return {{{"type", "NFC"}},
            sequence_of(isolating_split(kQwen2SplitPattern), byte_level_step(false))};
  if (name == "smollm")
    return {nullptr,
            sequence_of({{"type", "Digits"}, {"individual_digits", true}}, byte_level_step(true))};
  throw std::logic_error("no pipeline for pre-tokenizer " + name);
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const auto& name : names) {
    text += text.empty() ? "" : ", ";
    text += name;
  }
  return text;
}

void check_options(const BpeTrainingOptions& options) {
  const auto& names = bpe_pre_tokenizer_names();
  if (std::find(names.begin(), names.end(), options.pre_tokenizer) == names.end())
    throw UsageError("unknown pre-tokenizer '" + options.pre_tokenizer +
                     "' (known: " + joined(names) + ")");
  std::vector<std::string> seen;
  for (const auto& token : options.special_tokens) {
    if (token.empty()) throw UsageError("a special token is empty");
    if (valid_utf8_prefix(token) != token.size())
      throw UsageError("special token '" + token + "' is not valid UTF-8");
    if (std::find(seen.begin(), seen.end(), token) != seen.end())
      throw UsageError("special token '" + token + "' is given twice");
    seen.push_back(token);
  }
  const int64_t smallest = static_cast<int64_t>(options.special_tokens.size()) + 256;
  if (options.vocab_size < smallest || options.vocab_size > kMaxTrainedVocab)
    throw UsageError("vocabulary size " + std::to_string(options.vocab_size) +
                     " is out of range: the " + std::to_string(options.special_tokens.size()) +
                     " special token(s) and the 256 single bytes need at least " +
                     std::to_string(smallest) + ", and at most " +
                     std::to_string(kMaxTrainedVocab) + " ids are allowed");
  if (options.min_frequency < 0) throw UsageError("the minimum pair frequency is negative");
}

// A word as the tokens it is currently split into, and how often the text holds it.
struct TrainingWord {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

uint64_t merge_pair_key(int32_t left, int32_t right) {
  return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
}

// A candidate merge in the queue. A merge queues every pair it adds occurrences to with its new
// count, and otherwise counts only fall; so an entry whose count is out of date is too high, and
// it is corrected when it reaches the top and queued again (a lazy update).
struct QueuedPair {
  int64_t count;
  uint64_t pair;
  // The top of std::priority_queue is the largest: the highest count, then the smallest pair.
  bool operator<(const QueuedPair& other) const {
    return count != other.count ? count < other.count : pair > other.pair;
  }
};

// Learns merges over `words` (their symbols are merged in place) into `tokens` and `merges`, as
// Hugging Face's BpeTrainer does: pair counts and the words holding each pair are kept up to date
// as each merge changes the few words that hold its pair, so a merge costs what it touches, not a
// recount of the text.
class MergeLearner {
 public:
  MergeLearner(std::vector<TrainingWord> words, std::vector<std::string>& tokens,
               std::vector<std::pair<int32_t, int32_t>>& merges)
      : words_(std::move(words)), tokens_(tokens), merges_(merges) {
    for (std::size_t id = 0; id < tokens_.size(); ++id)
      token_ids_.emplace(tokens_[id], static_cast<int32_t>(id));
  }

  void learn(std::size_t vocab_size, int64_t min_frequency) {
    count_pairs();
    while (tokens_.size() < vocab_size && !queue_.empty()) {
      QueuedPair top = queue_.top();
      queue_.pop();
      const int64_t count = count_of(top.pair);
      if (count != top.count) {
        if (count > 0) queue_.push({count, top.pair});
        continue;
      }
      if (count < std::max<int64_t>(1, min_frequency)) break;
      merge(static_cast<int32_t>(top.pair >> 32), static_cast<int32_t>(top.pair & 0xFFFFFFFFu));
    }
  }

 private:
  int64_t count_of(uint64_t pair) const {
    auto it = pair_counts_.find(pair);
    return it == pair_counts_.end() ? 0 : it->second;
  }

  void count_pairs() {
    // Distinct pairs are fewer than the words' symbols; reserving for them spares the rehashes.
    std::size_t symbols = 0;
    for (const auto& word : words_) symbols += word.symbols.size();
    pair_counts_.reserve(symbols / 2);
    pair_words_.reserve(symbols / 2);
    for (std::size_t w = 0; w < words_.size(); ++w) {
      const auto& symbols = words_[w].symbols;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        uint64_t pair = merge_pair_key(symbols[i], symbols[i + 1]);
        pair_counts_[pair] += words_[w].count;
        auto& holders = pair_words_[pair];
        if (holders.empty() || holders.back() != w) holders.push_back(static_cast<uint32_t>(w));
      }
    }
    for (const auto& [pair, count] : pair_counts_) queue_.push({count, pair});
  }

  // The token of left + right: a new one, or the same spelling reached by another pair before.
  int32_t merged_token(int32_t left, int32_t right) {
    std::string spelling = tokens_[left] + tokens_[right];
    auto [it, added] = token_ids_.emplace(spelling, static_cast<int32_t>(tokens_.size()));
    if (added) tokens_.push_back(std::move(spelling));
    return it->second;
  }

  void merge(int32_t left, int32_t right) {
    const int32_t merged = merged_token(left, right);
    merges_.emplace_back(left, right);
    const uint64_t pair = merge_pair_key(left, right);
    std::vector<uint32_t> holders = std::move(pair_words_[pair]);
    pair_words_.erase(pair);
    // A word may be listed twice (found again through another spelling) or no longer hold the
    // pair; each is merged once, and merging a word without the pair changes nothing.
    std::sort(holders.begin(), holders.end());
    holders.erase(std::unique(holders.begin(), holders.end()), holders.end());
    std::vector<uint64_t> formed;  // pairs that gained occurrences, with `merged` on one side
    for (uint32_t w : holders) merge_in_word(w, left, right, merged, formed);
    pair_counts_.erase(pair);  // overlapping runs ("a a a") discounted it on the way: now none
    std::sort(formed.begin(), formed.end());
    formed.erase(std::unique(formed.begin(), formed.end()), formed.end());
    for (uint64_t p : formed) {
      if (int64_t count = count_of(p); count > 0) queue_.push({count, p});
    }
  }

  // Replaces each `left right` of word `w`, left to right without overlap, by `merged`, moving the
  // word's count from the neighbouring pairs it breaks to the ones it forms.
  void merge_in_word(uint32_t w, int32_t left, int32_t right, int32_t merged,
                     std::vector<uint64_t>& formed) {
    TrainingWord& word = words_[w];
    auto& symbols = word.symbols;
    auto change = [&](int32_t a, int32_t b, int64_t delta) {
      uint64_t p = merge_pair_key(a, b);
      pair_counts_[p] += delta;
      if (delta > 0) {
        formed.push_back(p);
        auto& holders = pair_words_[p];
        if (holders.empty() || holders.back() != w) holders.push_back(w);
      }
    };
    // In place: the word written so far (symbols[0, kept)) never overtakes the part still read.
    std::size_t kept = 0;
    for (std::size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        if (kept > 0) {
          change(symbols[kept - 1], left, -word.count);
          change(symbols[kept - 1], merged, word.count);
        }
        if (i + 2 < symbols.size()) {
          change(right, symbols[i + 2], -word.count);
          change(merged, symbols[i + 2], word.count);
        }
        symbols[kept++] = merged;
        i += 2;
      } else {
        symbols[kept++] = symbols[i++];
      }
    }
    symbols.resize(kept);
  }

  std::vector<TrainingWord> words_;
  std::vector<std::string>& tokens_;
  std::vector<std::pair<int32_t, int32_t>>& merges_;
  std::unordered_map<std::string, int32_t> token_ids_;
  std::unordered_map<uint64_t, int64_t> pair_counts_;  // over every word, times its count
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words_;  // words that held the pair
  std::priority_queue<QueuedPair> queue_;
};

// `{"key": value, ...}` from values already serialized, in the order given: a vocabulary of
// 100,000 tokens is written in id order, as Hugging Face writes it, without an ordered JSON object
// that would search its keys on every insertion.
std::string json_object_text(const std::vector<std::pair<std::string, std::string>>& fields,
                             const std::string& indent) {
  std::string text = "{";
  for (std::size_t i = 0; i < fields.size(); ++i) {
    text += i ? ",\n" : "\n";
    text += indent + "  " + json(fields[i].first).dump() + ": " + fields[i].second;
  }
  return text + "\n" + indent + "}";
}

std::string vocab_text(const std::vector<std::string>& tokens) {
  std::string text = "{";
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    text += id ? "," : "";
    text += json(tokens[id]).dump() + ":" + std::to_string(id);
  }
  return text + "}";
}

// Merge rules as "left right": byte-level spellings never hold a space, and every version of the
// tokenizers library reads this form (newer ones also write ["left", "right"]).
std::vector<std::string> merge_lines(const TrainedBpe& bpe) {
  std::vector<std::string> lines;
  lines.reserve(bpe.merges.size());
  for (const auto& [left, right] : bpe.merges)
    lines.push_back(bpe.tokens[left] + " " + bpe.tokens[right]);
  return lines;
}

std::string tokenizer_json_text(const TrainedBpe& bpe) {
  json added = json::array();
  for (std::size_t id = 0; id < bpe.options.special_tokens.size(); ++id)
    added.push_back({{"id", id},
                     {"content", bpe.options.special_tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const TrainingPipeline pipeline = pipeline_of(bpe.options.pre_tokenizer);
  const std::string model = json_object_text({{"type", "\"BPE\""},
                                              {"dropout", "null"},
                                              {"unk_token", "null"},
                                              {"continuing_subword_prefix", "null"},
                                              {"end_of_word_suffix", "null"},
                                              {"fuse_unk", "false"},
                                              {"byte_fallback", "false"},
                                              {"ignore_merges", "false"},
                                              {"vocab", vocab_text(bpe.tokens)},
                                              {"merges", json(merge_lines(bpe)).dump()}},
                                             "  ");
  return json_object_text({{"version", "\"1.0\""},
                           {"truncation", "null"},
                           {"padding", "null"},
                           {"added_tokens", added.dump()},
                           {"normalizer", pipeline.normalizer.dump()},
                           {"pre_tokenizer", pipeline.pre_tokenizer.dump()},
                           {"post_processor", "null"},
                           {"decoder", byte_level_step(/*use_regex=*/true).dump()},
                           {"model", model}},
                          "") +
         "\n";
}

}  // namespace

const std::vector<std::string>& bpe_pre_tokenizer_names() {
  static const std::vector<std::string> kNames = {"gpt2", "llama3", "qwen2", "smollm"};
  return kNames;
}

struct BpeTrainer::Counts {
  SpecialTokenSplitter specials;
  TextNormalizer normalizer;
  PreTokenizer pre_tokenizer;
  std::unordered_map<std::string, int64_t> words;  // word (its bytes) -> times seen
  int64_t words_seen = 0;
};

BpeTrainer::BpeTrainer(BpeTrainingOptions options) : options_(std::move(options)) {
  check_options(options_);
  counts_ = std::make_unique<Counts>();
  std::vector<SpecialToken> specials;
  for (std::size_t id = 0; id < options_.special_tokens.size(); ++id)
    specials.push_back({options_.special_tokens[id], static_cast<int64_t>(id)});
  counts_->specials = SpecialTokenSplitter(std::move(specials));
  const TrainingPipeline pipeline = pipeline_of(options_.pre_tokenizer);
  const std::string origin = "pre-tokenizer " + options_.pre_tokenizer;
  counts_->normalizer = read_normalizer(pipeline.normalizer, origin);
  counts_->pre_tokenizer = read_pre_tokenizer(pipeline.pre_tokenizer, origin, std::nullopt);
}

BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::add_text(std::string_view text) {
  Counts& c = *counts_;
  auto on_word = [&](std::string_view word) {
    ++c.words[std::string(word)];
    ++c.words_seen;
  };
  c.specials.split(
      text,
      [&](std::string_view stretch) {
        const bool at_input_start = stretch.data() == text.data();
        if (c.normalizer.empty()) {
          c.pre_tokenizer.split(stretch, at_input_start, on_word);
        } else {
          const std::string normalized = c.normalizer.normalize(stretch);
          c.pre_tokenizer.split(normalized, at_input_start, on_word);
        }
      },
      [](int64_t) {});
}

int64_t BpeTrainer::words_seen() const {
  return counts_->words_seen;
}

int64_t BpeTrainer::distinct_words() const {
  return static_cast<int64_t>(counts_->words.size());
}

TrainedBpe BpeTrainer::train() const {
  TrainedBpe bpe;
  bpe.options = options_;
  bpe.tokens = options_.special_tokens;
  // The bytes in the order of their spellings' code points, as the trainer sorts its alphabet.
  std::vector<int> bytes(256);
  std::iota(bytes.begin(), bytes.end(), 0);
  std::sort(bytes.begin(), bytes.end(),
            [](int a, int b) { return byte_spelling(a) < byte_spelling(b); });
  std::array<int32_t, 256> byte_ids{};
  for (int byte : bytes) {
    byte_ids[byte] = static_cast<int32_t>(bpe.tokens.size());
    bpe.tokens.push_back(byte_spelling(byte));
  }
  // Sorted by spelling, so that the words' order (which only decides the order merges visit
  // them in) does not depend on the hash table's.
  std::vector<std::pair<std::string_view, int64_t>> counted(counts_->words.begin(),
                                                            counts_->words.end());
  std::sort(counted.begin(), counted.end());
  std::vector<TrainingWord> words(counted.size());
  for (std::size_t w = 0; w < counted.size(); ++w) {
    for (char byte : counted[w].first)
      words[w].symbols.push_back(byte_ids[static_cast<unsigned char>(byte)]);
    words[w].count = counted[w].second;
  }
  MergeLearner(std::move(words), bpe.tokens, bpe.merges)
      .learn(static_cast<std::size_t>(options_.vocab_size), options_.min_frequency);
  return bpe;
}

void write_trained_tokenizer(const TrainedBpe& bpe, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  write_file_atomically(dir / "tokenizer.json", tokenizer_json_text(bpe));
  write_file_atomically(dir / "vocab.json", vocab_text(bpe.tokens) + "\n");
  std::string merges = "#version: 0.2\n";
  for (const auto& line : merge_lines(bpe)) merges += line + "\n";
  write_file_atomically(dir / "merges.txt", merges);
  // PreTrainedTokenizerFast runs tokenizer.json as it is; decoding must not touch the spaces.
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"clean_up_tokenization_spaces", false}};
  if (!bpe.options.special_tokens.empty()) config["eos_token"] = bpe.options.special_tokens[0];
  write_file_atomically(dir / kTokenizerConfigFile, config.dump(2) + "\n");
}

}  // namespace lmtune
