#include "lmtune/io/tokenizer.h"

#include "bpe_tokenizer.h"
#include "lmtune/core/errors.h"
#include "sentencepiece_tokenizer.h"
#include "tokenizer_files.h"
#include "tokenizer_json.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

constexpr const char* kExpectedFiles =
    "expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model";

bool has_gpt2_files(const fs::path& dir) {
  return fs::exists(dir / "vocab.json") || fs::exists(dir / "merges.txt");
}

// Reads the layout check_tokenizer_files has found in `dir`.
std::unique_ptr<Tokenizer> load_from_files(const fs::path& dir) {
  fs::path tokenizer_json = dir / "tokenizer.json";
  fs::path sentencepiece_model = dir / "tokenizer.model";
  if (fs::exists(tokenizer_json)) {
    nlohmann::json tree = read_tokenizer_json(tokenizer_json);
    try {
      return std::make_unique<BpeTokenizer>(read_tokenizer_json_vocabulary(tree, tokenizer_json));
    } catch (const UnsupportedTokenizer&) {
      // Models such as T5 ship a tokenizer.json lmtune does not encode (a Unigram model) beside
      // the SentencePiece model it was converted from.
      if (!fs::exists(sentencepiece_model)) throw;
      return std::make_unique<SentencePieceTokenizer>(sentencepiece_model);
    }
  }
  if (has_gpt2_files(dir)) return std::make_unique<BpeTokenizer>(read_gpt2_vocabulary(dir));
  return std::make_unique<SentencePieceTokenizer>(sentencepiece_model);
}

}  // namespace

void check_tokenizer_files(const fs::path& dir) {
  if (!fs::is_directory(dir))
    throw InputError(dir.string(),
                     std::string("not a directory; ") + kExpectedFiles + " in a model directory");
  if (fs::exists(dir / "tokenizer.json")) return;
  if (has_gpt2_files(dir)) {
    for (const char* name : {"vocab.json", "merges.txt"})
      if (!fs::exists(dir / name))
        throw InputError((dir / name).string(),
                         "missing: a GPT-2 tokenizer needs both vocab.json and merges.txt");
    return;
  }
  if (!fs::exists(dir / "tokenizer.model"))
    throw InputError(dir.string(), std::string("no tokenizer files: ") + kExpectedFiles);
}

bool has_tokenizer_files(const fs::path& dir) {
  return fs::exists(dir / "tokenizer.json") || has_gpt2_files(dir) ||
         fs::exists(dir / "tokenizer.model");
}

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& dir) {
  check_tokenizer_files(dir);
  try {
    return load_from_files(dir);
  } catch (const nlohmann::json::exception& e) {
    // A value of the wrong JSON type somewhere the readers do not check field by field.
    throw InputError(dir.string(), std::string("malformed tokenizer file: ") + e.what());
  }
}

}  // namespace lmtune
