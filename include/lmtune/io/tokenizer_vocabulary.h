// A model directory's tokenizer listed token by token (spelling, SentencePiece score and type,
// added-token flags), with its BPE merge rules and the shape of its pre-tokenizer: what an
// exporter needs to write the vocabulary in another format (GGUF). Never encodes text. Errors are
// InputError naming the file (exit 3).
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace lmtune {

enum class VocabularyKind {
  kByteLevelBpe,   // GPT-2's vocab.json + merges.txt, or a tokenizer.json ending in ByteLevel
  kSentencePiece,  // tokenizer.model
};

// SentencePiece's piece types (a user-defined piece counts as kNormal); every token of a BPE
// vocabulary is kNormal.
enum class PieceType { kNormal, kUnknown, kControl, kUnused, kByte };

// The byte-level pre-tokenizer pipelines in wide use, recognised from tokenizer.json (or GPT-2's
// files); anything else, a prefix space included, is kOther.
enum class PreTokenizerShape {
  kGpt2,        // ByteLevel with GPT-2's own pattern
  kDigitsGpt2,  // Digits one by one, then ByteLevel with GPT-2's pattern (SmolLM, StarCoder)
  kLlama3,      // Split by Llama 3's pattern (digits in threes), then ByteLevel without a pattern
  kQwen2,       // Split by Qwen2's pattern (digits one by one), then ByteLevel without a pattern
  kOther,
};

struct VocabularyToken {
  std::string text;      // as the vocabulary spells it: "Ġthe", "▁the", "<0x0A>", "<s>"
  bool defined = false;  // whether a token has this id
  PieceType type = PieceType::kNormal;
  float score = 0;       // SentencePiece's; 0 for BPE
  bool added = false;    // an added token (tokenizer.json's added_tokens, tokenizer_config.json's
                         // added_tokens_decoder, GPT-2's configured special tokens)
  bool special = false;  // an added token marked special
};

struct TokenizerVocabulary {
  VocabularyKind kind = VocabularyKind::kByteLevelBpe;
  std::filesystem::path file;                               // read from; named in messages
  std::vector<VocabularyToken> tokens;                      // by id, up to the largest id
  std::vector<std::pair<std::string, std::string>> merges;  // BPE, highest priority first
  PreTokenizerShape pre_tokenizer = PreTokenizerShape::kOther;
  std::string pre_tokenizer_summary;  // "Sequence[Split, ByteLevel]", for messages
};

// The vocabulary of the tokenizer in `dir`, found as load_tokenizer finds it, except that
// `prefer_sentencepiece` takes a tokenizer.model over a tokenizer.json beside it. A tokenizer.json
// that is BPE but not byte-level (SentencePiece-style, with byte fallback) is read from the
// tokenizer.model beside it, and is an InputError when there is none.
TokenizerVocabulary read_tokenizer_vocabulary(const std::filesystem::path& dir,
                                              bool prefer_sentencepiece);

}  // namespace lmtune
