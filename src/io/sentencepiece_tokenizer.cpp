#include "sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "lmtune/core/errors.h"
#include "tokenizer_files.h"

namespace lmtune {
namespace fs = std::filesystem;

SentencePieceTokenizer::SentencePieceTokenizer(const fs::path& model_file)
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  std::string bytes = read_tokenizer_file(model_file);
  auto status = processor_->LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw InputError(model_file.string(), "not a SentencePiece model (" + status.ToString() + ")");
  std::vector<SpecialToken> specials;
  for (int id = 0; id < processor_->GetPieceSize(); ++id) {
    if (processor_->IsControl(id) || processor_->IsUnknown(id))
      specials.push_back({processor_->IdToPiece(id), id});
  }
  specials_ = SpecialTokenSplitter(std::move(specials));
  files_ = {model_file};
  auto config_files = tokenizer_config_files(model_file.parent_path());
  files_.insert(files_.end(), config_files.begin(), config_files.end());
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int64_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  auto on_text = [&](std::string_view stretch) {
    std::vector<int> pieces;
    auto status = processor_->Encode({stretch.data(), stretch.size()}, &pieces);
    if (!status.ok()) throw Error("SentencePiece could not encode the text: " + status.ToString());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  };
  specials_.split(text, on_text, [&](int64_t id) { ids.push_back(id); });
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  std::vector<int> run;  // ordinary pieces, decoded together so SentencePiece joins them right
  auto flush = [&] {
    text += processor_->DecodeIds(run);
    run.clear();
  };
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw Error("cannot decode token id " + std::to_string(id) +
                  ": the tokenizer has no such token (vocabulary size " +
                  std::to_string(vocab_size()) + ")");
    if (processor_->IsControl(static_cast<int>(id))) {
      flush();
      text += processor_->IdToPiece(static_cast<int>(id));  // SentencePiece would drop it
    } else {
      run.push_back(static_cast<int>(id));
    }
  }
  flush();
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const {
  return processor_->GetPieceSize();
}

std::optional<int64_t> SentencePieceTokenizer::eos_id() const {
  int id = processor_->eos_id();
  return id >= 0 ? std::optional<int64_t>(id) : std::nullopt;
}

void SentencePieceTokenizer::save(const fs::path& dir) const {
  copy_tokenizer_files(files_, dir);
}

}  // namespace lmtune
