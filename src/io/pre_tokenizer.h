// tokenizer.json's pre-tokenizers (ByteLevel, Split, Digits, Metaspace, in sequence): split
// normalized text into the words BPE merges within.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "function_ref.h"
#include "regex_pattern.h"

namespace lmtune {

// The Split patterns of Llama 3's and Qwen2's tokenizer.json (each then ByteLevel without its
// pattern); they differ in \p{N}{1,3}.
inline constexpr const char* kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// What Split does with the pieces its pattern matches (tokenizer.json's "behavior").
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Where Metaspace puts its replacement character before a piece that does not start with it.
enum class PrependScheme { kAlways, kFirst, kNever };  // kFirst: only before the input's start

class PreTokenizer {
 public:
  // Receives each piece and whether it starts the whole input (Metaspace's kFirst needs to know).
  using PieceSink = FunctionRef<void(std::string_view piece, bool at_input_start)>;

  // One pre-tokenizer; each is applied to every piece the one before it produced.
  class Step {
   public:
    virtual ~Step() = default;
    virtual void split(std::string_view piece, bool at_input_start, PieceSink emit) const = 0;
  };

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // GPT-2's byte-level step: a space before pieces that do not start with one when
  // `add_prefix_space`, then GPT-2's pattern when `use_regex`. It must come last: from here on
  // BPE sees the pieces as bytes.
  void add_byte_level(bool add_prefix_space, bool use_regex);
  void add_split(TextPattern pattern, SplitBehavior behavior, bool invert);
  // Digits apart from other characters: each alone (`individual`) or in runs.
  void add_digits(bool individual);
  // Spaces become `replacement` (U+2581 "▁"), which is put before pieces by `scheme`; with
  // `split`, each replacement then starts a new piece.
  void add_metaspace(std::string replacement, PrependScheme scheme, bool split);

  // Whether BPE sees the words as bytes (the last step is ByteLevel) rather than characters.
  bool byte_level() const { return byte_level_; }

  // Calls on_word(std::string_view) for each word of `text`, in order; `at_input_start` says
  // whether `text` starts the whole input. Words are never empty.
  template <class OnWord>
  void split(std::string_view text, bool at_input_start, OnWord&& on_word) const {
    run(0, text, at_input_start, [&](std::string_view word, bool) { on_word(word); });
  }

 private:
  void run(std::size_t step, std::string_view piece, bool at_input_start, PieceSink sink) const;

  std::vector<std::unique_ptr<Step>> steps_;
  bool byte_level_ = false;
};

}  // namespace lmtune
