#include "lmtune/io/tokenizer.h"

#include "bpe_tokenizer.h"
#include "lmtune/core/errors.h"
#include "sentencepiece_tokenizer.h"
#include "tokenizer_files.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

constexpr const char* kExpectedFiles =
    "expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model";

std::unique_ptr<Tokenizer> load_from_files(const fs::path& dir) {
  fs::path tokenizer_json = dir / "tokenizer.json";
  fs::path vocab_json = dir / "vocab.json";
  fs::path merges_txt = dir / "merges.txt";
  fs::path sentencepiece_model = dir / "tokenizer.model";
  if (fs::exists(tokenizer_json)) {
    nlohmann::json tree = read_tokenizer_json(tokenizer_json);
    // Models such as Llama 2 ship a tokenizer.json lmtune does not encode beside the
    // SentencePiece model it was converted from.
    if (unsupported_tokenizer_json(tree) && fs::exists(sentencepiece_model))
      return std::make_unique<SentencePieceTokenizer>(sentencepiece_model);
    return std::make_unique<BpeTokenizer>(read_tokenizer_json_vocabulary(tree, tokenizer_json));
  }
  if (fs::exists(vocab_json) || fs::exists(merges_txt)) {
    for (const auto& file : {vocab_json, merges_txt}) {
      if (!fs::exists(file))
        throw InputError(file.string(),
                         "missing: a GPT-2 tokenizer needs both vocab.json and merges.txt");
    }
    return std::make_unique<BpeTokenizer>(read_gpt2_vocabulary(dir));
  }
  if (fs::exists(sentencepiece_model))
    return std::make_unique<SentencePieceTokenizer>(sentencepiece_model);
  throw InputError(dir.string(), std::string("no tokenizer files: ") + kExpectedFiles);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir) {
  if (!fs::is_directory(dir))
    throw InputError(dir.string(),
                     std::string("not a directory; ") + kExpectedFiles + " in a model directory");
  try {
    return load_from_files(dir);
  } catch (const nlohmann::json::exception& e) {
    // A value of the wrong JSON type somewhere the readers do not check field by field.
    throw InputError(dir.string(), std::string("malformed tokenizer file: ") + e.what());
  }
}

}  // namespace lmtune
