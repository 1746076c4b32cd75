#include "bpe_tokenizer.h"

#include <fstream>
#include <queue>

#include "byte_alphabet.h"
#include "lmtune/core/errors.h"
#include "tokenizer_files.h"
#include "unicode_text.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

// The spelling of a byte-fallback token: "<0x0A>", upper-case hex as Hugging Face writes it.
std::string fallback_spelling(int byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return {'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeVocabulary vocabulary)
    : normalizer_(std::move(vocabulary.normalizer)),
      pre_tokenizer_(std::move(vocabulary.pre_tokenizer)),
      decoder_(std::move(vocabulary.decoder)),
      options_(vocabulary.model),
      rules_(vocabulary.merges),
      eos_id_(vocabulary.eos_id),
      framing_(std::move(vocabulary.framing)),
      tokenizer_class_(std::move(vocabulary.tokenizer_class)),
      files_(std::move(vocabulary.files)) {
  std::vector<SpecialToken> raw, normalized;
  for (auto& token : vocabulary.added) {
    if (!token.normalized) {
      raw.push_back(token);
      continue;
    }
    // Normalized text is searched for the token as the normalizer would have written it.
    SpecialToken as_normalized = token;
    as_normalized.text = normalizer_.normalize(token.text);
    normalized.push_back(std::move(as_normalized));
  }
  specials_ = SpecialTokenSplitter(std::move(raw));
  normalized_specials_ = SpecialTokenSplitter(std::move(normalized));
  index_vocabulary(vocabulary.tokens, vocabulary.vocab_file);
  for (const auto& token : vocabulary.added) {
    spellings_[token.id] = token.text;
    defined_[token.id] = true;
  }
}

BpeTokenizer::~BpeTokenizer() = default;

// Sizes the id tables and fills the lookups the encoder needs from the model's vocabulary.
void BpeTokenizer::index_vocabulary(const std::unordered_map<std::string, int32_t>& tokens,
                                    const fs::path& vocab_file) {
  int64_t size = 0;
  for (const auto& [spelling, id] : tokens) size = std::max<int64_t>(size, id + 1);
  for (const auto& token : specials_.tokens()) size = std::max(size, token.id + 1);
  for (const auto& token : normalized_specials_.tokens()) size = std::max(size, token.id + 1);
  spellings_.resize(size);
  defined_.resize(size);
  bool byte_level = pre_tokenizer_.byte_level();
  for (const auto& [spelling, id] : tokens) {
    spellings_[id] = spelling;
    defined_[id] = true;
    if (options_.ignore_merges)
      word_ids_.emplace(byte_level ? spelling_to_bytes(spelling).value_or(spelling) : spelling, id);
    if (!byte_level && !spelling.empty() && valid_utf8_prefix(spelling) == spelling.size() &&
        utf8_char_length(spelling) == spelling.size())
      char_ids_.emplace(utf8_decode_first(spelling), id);
  }
  fallback_ids_.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    if (auto it = tokens.find(fallback_spelling(byte)); it != tokens.end())
      fallback_ids_[byte] = it->second;
    if (!byte_level) continue;
    auto it = tokens.find(byte_spelling(static_cast<unsigned char>(byte)));
    if (it == tokens.end())
      throw InputError(vocab_file.string(),
                       "byte-level BPE needs a token for every byte; byte " + std::to_string(byte) +
                           " ('" + byte_spelling(static_cast<unsigned char>(byte)) + "') has none");
    byte_ids_[byte] = it->second;
  }
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3);  // English runs at about 4 bytes per token
  std::unique_lock<std::mutex> lock(cache_mutex_, std::try_to_lock);
  std::optional<WordCache> own_cache;
  WordCache& cache = lock.owns_lock() ? cache_ : own_cache.emplace();
  specials_.split(
      text,
      [&](std::string_view stretch) {
        encode_stretch(stretch, stretch.data() == text.data(), cache, ids);
      },
      [&](int64_t id) { ids.push_back(id); });
  return ids;
}

// Encodes text between the added tokens written as such: normalized, searched again for the
// added tokens that are matched in normalized text, then pre-tokenized into words.
void BpeTokenizer::encode_stretch(std::string_view stretch, bool at_input_start, WordCache& cache,
                                  std::vector<int64_t>& ids) const {
  std::string normalized;
  if (!normalizer_.empty()) {
    normalized = normalizer_.normalize(stretch);
    stretch = normalized;
  }
  auto on_word = [&](std::string_view word) { encode_word(word, cache, ids); };
  normalized_specials_.split(
      stretch,
      [&](std::string_view piece) {
        pre_tokenizer_.split(piece, at_input_start && piece.data() == stretch.data(), on_word);
      },
      [&](int64_t id) { ids.push_back(id); });
}

void BpeTokenizer::encode_word(std::string_view word, WordCache& cache,
                               std::vector<int64_t>& ids) const {
  if (pre_tokenizer_.byte_level() && word.size() == 1) {  // punctuation, newlines: nothing to merge
    ids.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  bool cacheable = word.size() <= WordCache::kMaxPieceLength;
  if (cacheable && cache.find(word, ids)) return;
  std::size_t start = ids.size();
  auto whole = options_.ignore_merges ? word_ids_.find(std::string(word)) : word_ids_.end();
  if (whole != word_ids_.end()) {
    ids.push_back(whole->second);
  } else {
    std::vector<int32_t> symbols;
    initial_symbols(word, symbols);
    merge(symbols, ids);
  }
  if (cacheable) cache.insert(word, ids.data() + start, ids.size() - start);
}

// The tokens BPE starts from: one per byte at byte level; else one per character, a character
// outside the vocabulary becoming its byte-fallback tokens, else the unknown token (one per run
// with fuse_unk), else nothing, as in Hugging Face's tokenizers.
void BpeTokenizer::initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const {
  symbols.reserve(word.size());
  if (pre_tokenizer_.byte_level()) {
    for (char byte : word) symbols.push_back(byte_ids_[static_cast<unsigned char>(byte)]);
    return;
  }
  bool previous_unknown = false;
  for (std::size_t i = 0; i < word.size();) {
    std::size_t valid = valid_utf8_prefix(word.substr(i, 4));
    std::size_t length = valid > 0 ? utf8_char_length(word.substr(i)) : 1;
    if (valid > 0) {
      auto it = char_ids_.find(utf8_decode_first(word.substr(i)));
      if (it != char_ids_.end()) {
        symbols.push_back(it->second);
        previous_unknown = false;
        i += length;
        continue;
      }
    }
    std::string_view character = word.substr(i, length);
    i += length;
    bool has_fallback = options_.byte_fallback;
    for (char byte : character)
      has_fallback = has_fallback && fallback_ids_[static_cast<unsigned char>(byte)] >= 0;
    if (has_fallback) {
      for (char byte : character)
        symbols.push_back(fallback_ids_[static_cast<unsigned char>(byte)]);
      previous_unknown = false;
    } else if (options_.unk_id && !(options_.fuse_unk && previous_unknown)) {
      symbols.push_back(*options_.unk_id);
      previous_unknown = true;
    }
  }
}

// Applies the lowest-ranked rule that matches an adjacent pair, the leftmost first among equals,
// until none matches: GPT-2's order, and Hugging Face's. A heap of candidate pairs keeps this
// O(n log n), so a long run of spaces or symbols cannot stall the encoder.
void BpeTokenizer::merge(std::vector<int32_t>& initial, std::vector<int64_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t next;  // index of the following live symbol, -1 at the end
    int32_t prev;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;     // index of the left symbol
    int32_t left_id;  // ids when the pair was seen: a merge since then makes the entry stale
    int32_t right_id;
    int32_t merged;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  const auto n = static_cast<int32_t>(initial.size());
  if (n == 0) return;
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) symbols[i] = {initial[i], i + 1 < n ? i + 1 : -1, i - 1};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    const Symbol& right = symbols[symbols[left].next];
    if (const MergeTable::Rule* rule = rules_.find(symbols[left].id, right.id))
      heap.push({rule->rank, left, symbols[left].id, right.id, rule->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.left];
    if (left.id != top.left_id || left.next < 0 || symbols[left.next].id != top.right_id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.id = -1;
    consider(left.prev);
    consider(top.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size() || !defined_[id])
      throw Error("cannot decode token id " + std::to_string(id) +
                  ": the tokenizer has no such token (vocabulary size " +
                  std::to_string(vocab_size()) + ")");
    tokens.push_back(spellings_[id]);
  }
  return decoder_.decode(std::move(tokens));
}

void BpeTokenizer::save(const fs::path& dir) const {
  copy_tokenizer_files(files_, dir);
  bool has_config = std::any_of(files_.begin(), files_.end(), [](const fs::path& f) {
    return f.filename() == kTokenizerConfigFile;
  });
  if (has_config) return;
  // Without a config.json beside it, transformers picks the tokenizer class from this file.
  nlohmann::json config = {{"tokenizer_class", tokenizer_class_}};
  if (eos_id_) config["eos_token"] = spellings_[*eos_id_];
  if (tokenizer_class_ == "GPT2Tokenizer" && eos_id_) {
    config["bos_token"] = config["unk_token"] = spellings_[*eos_id_];  // GPT-2's own convention
  } else {
    if (framing_.prefix.size() == 1) config["bos_token"] = spellings_[framing_.prefix[0]];
    if (options_.unk_id) config["unk_token"] = spellings_[*options_.unk_id];
  }
  std::ofstream out(dir / kTokenizerConfigFile);
  out << config.dump(2) << "\n";
  if (!out)
    throw Error((dir / kTokenizerConfigFile).string() + ": cannot write the tokenizer config");
}

}  // namespace lmtune
