// SentencePiece models (tokenizer.model) through the reference library, libsentencepiece.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "lmtune/io/tokenizer.h"
#include "special_tokens.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace lmtune {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Throws InputError naming `model_file` when it is missing or not a SentencePiece model.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file);
  ~SentencePieceTokenizer() override;

  // Control and unknown pieces written in the text (<s>, </s>, <unk>) become their ids, as in
  // Hugging Face's tokenizers; SentencePiece itself would spell them out piece by piece.
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  std::optional<int64_t> eos_id() const override;
  void save(const std::filesystem::path& dir) const override;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  SpecialTokenSplitter specials_;
  std::vector<std::filesystem::path> files_;  // what save() copies
};

}  // namespace lmtune
