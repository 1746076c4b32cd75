#include "bpe_tokenizer.h"

#include <fstream>
#include <queue>

#include "lmtune/core/errors.h"
#include "tokenizer_files.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

// GPT-2 spells every byte as a printable character, so that tokens are readable strings: bytes
// printable in Latin-1 stand for themselves, the others (controls, space, ...) take U+0100 on, in
// byte order. 'Ġ' (U+0120) is the space byte.
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> alphabet{};
  char32_t next = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
    alphabet[byte] = printable ? static_cast<char32_t>(byte) : next++;
  }
  return alphabet;
}

std::string utf8(char32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else {  // the alphabet stays below U+0800: two bytes
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

// The bytes a byte-level spelling stands for, or nullopt when it uses a character outside the
// alphabet (added tokens such as "<|endoftext|>" are spelt in plain ASCII and do map).
std::optional<std::string> spelling_to_bytes(const std::string& spelling) {
  static const auto kByteOf = [] {
    std::array<int, 0x200> byte_of;
    byte_of.fill(-1);
    auto alphabet = byte_alphabet();
    for (int byte = 0; byte < 256; ++byte) byte_of[alphabet[byte]] = byte;
    return byte_of;
  }();
  std::string bytes;
  for (std::size_t i = 0; i < spelling.size();) {
    auto lead = static_cast<unsigned char>(spelling[i]);
    char32_t code_point = lead;
    if (lead >= 0xC0 && lead < 0xE0 && i + 1 < spelling.size()) {
      code_point = ((lead & 0x1F) << 6) | (static_cast<unsigned char>(spelling[i + 1]) & 0x3F);
      i += 2;
    } else if (lead < 0x80) {
      i += 1;
    } else {
      return std::nullopt;
    }
    if (code_point >= kByteOf.size() || kByteOf[code_point] < 0) return std::nullopt;
    bytes += static_cast<char>(kByteOf[code_point]);
  }
  return bytes;
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeVocabulary vocabulary)
    : specials_(std::move(vocabulary.added)),
      rules_(vocabulary.merges),
      eos_id_(vocabulary.eos_id),
      add_prefix_space_(vocabulary.add_prefix_space),
      files_(std::move(vocabulary.files)) {
  int64_t size = 0;
  for (const auto& [spelling, id] : vocabulary.tokens) size = std::max<int64_t>(size, id + 1);
  for (const auto& token : specials_.tokens()) size = std::max(size, token.id + 1);
  token_bytes_.resize(size);
  defined_.resize(size);
  for (const auto& [spelling, id] : vocabulary.tokens) {
    // A spelling outside the byte alphabet can never come out of the merges; it decodes as written.
    token_bytes_[id] = spelling_to_bytes(spelling).value_or(spelling);
    defined_[id] = true;
  }
  for (const auto& token : specials_.tokens()) {
    token_bytes_[token.id] = token.text;
    defined_[token.id] = true;
  }
  auto alphabet = byte_alphabet();
  for (int byte = 0; byte < 256; ++byte) {
    auto it = vocabulary.tokens.find(utf8(alphabet[byte]));
    if (it == vocabulary.tokens.end())
      throw InputError(vocabulary.vocab_file.string(),
                       "byte-level BPE needs a token for every byte; byte " + std::to_string(byte) +
                           " ('" + utf8(alphabet[byte]) + "') has none");
    byte_ids_[byte] = it->second;
  }
}

BpeTokenizer::~BpeTokenizer() = default;

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3);  // English runs at about 4 bytes per token
  std::unique_lock<std::mutex> lock(cache_mutex_, std::try_to_lock);
  std::optional<WordCache> own_cache;
  WordCache& cache = lock.owns_lock() ? cache_ : own_cache.emplace();
  specials_.split(
      text, [&](std::string_view stretch) { encode_text(stretch, cache, ids); },
      [&](int64_t id) { ids.push_back(id); });
  return ids;
}

// Encodes text that holds no special token. Bytes that are not valid UTF-8 cannot take part in
// the pattern's character classes; each becomes its own byte token, so any input round-trips.
void BpeTokenizer::encode_text(std::string_view text, WordCache& cache,
                               std::vector<int64_t>& ids) const {
  std::string prefixed;
  if (add_prefix_space_ && text.front() != ' ') {
    prefixed = " " + std::string(text);
    text = prefixed;
  }
  auto on_piece = [&](std::string_view piece) { encode_piece(piece, cache, ids); };
  while (!text.empty()) {
    std::size_t valid = valid_utf8_prefix(text);
    pretokenizer_.split(text.substr(0, valid), on_piece);
    if (valid == text.size()) break;
    ids.push_back(byte_ids_[static_cast<unsigned char>(text[valid])]);
    text.remove_prefix(valid + 1);
  }
}

void BpeTokenizer::encode_piece(std::string_view piece, WordCache& cache,
                                std::vector<int64_t>& ids) const {
  if (piece.size() == 1) {  // punctuation, newlines: no merge can apply
    ids.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() > WordCache::kMaxPieceLength) {
    merge(piece, ids);
    return;
  }
  if (cache.find(piece, ids)) return;
  std::size_t start = ids.size();
  merge(piece, ids);
  cache.insert(piece, ids.data() + start, ids.size() - start);
}

// Starts from one token per byte and applies the lowest-ranked rule that matches an adjacent
// pair, the leftmost first among equals, until none matches: GPT-2's order. A heap of candidate
// pairs keeps this O(n log n), so a long run of spaces or symbols cannot stall the encoder.
void BpeTokenizer::merge(std::string_view piece, std::vector<int64_t>& ids) const {
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
  const auto n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i)
    symbols[i] = {byte_ids_[static_cast<unsigned char>(piece[i])], i + 1 < n ? i + 1 : -1, i - 1};
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
  std::string text;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size() || !defined_[id])
      throw Error("cannot decode token id " + std::to_string(id) +
                  ": the tokenizer has no such token (vocabulary size " +
                  std::to_string(vocab_size()) + ")");
    text += token_bytes_[id];
  }
  return text;
}

void BpeTokenizer::save(const fs::path& dir) const {
  copy_tokenizer_files(files_, dir);
  bool has_config = std::any_of(files_.begin(), files_.end(), [](const fs::path& f) {
    return f.filename() == kTokenizerConfigFile;
  });
  if (has_config) return;
  // Without a config.json beside it, transformers picks the tokenizer class from this file.
  nlohmann::json config = {{"tokenizer_class", "GPT2Tokenizer"}};
  if (eos_id_) {
    std::string eos = token_bytes_[*eos_id_];
    config["bos_token"] = config["eos_token"] = config["unk_token"] = eos;
  }
  std::ofstream out(dir / kTokenizerConfigFile);
  out << config.dump(2) << "\n";
  if (!out)
    throw Error((dir / kTokenizerConfigFile).string() + ": cannot write the tokenizer config");
}

}  // namespace lmtune
