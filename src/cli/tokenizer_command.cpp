// `lmtune tokenizer train|extend`: domain tokenizers. `train` learns a byte-level BPE tokenizer
// from text files; `extend` adds tokens to a model's tokenizer and embeddings.
#include <unistd.h>

#include <chrono>
#include <iostream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/data/reader.h"
#include "lmtune/io/bpe_trainer.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/vocab_extension.h"

namespace lmtune::cli {
namespace fs = std::filesystem;
namespace {

struct TrainTokenizerArgs {
  std::vector<std::string> files;
  BpeTrainingOptions options;
  std::string out;
};

// `--out`: a new or empty directory this process can write into, checked before any work.
void prepare_out_dir(const std::string& out) {
  std::error_code error;
  if (fs::exists(out, error) && !(fs::is_directory(out, error) && fs::is_empty(out, error)))
    throw UsageError("--out " + out + ": exists and is not an empty directory; choose a new one");
  fs::create_directories(out, error);
  if (error)
    throw UsageError("--out " + out + ": cannot create the directory (" + error.message() +
                     "); choose a writable place");
  if (::access(out.c_str(), W_OK) != 0)
    throw UsageError("--out " + out + ": the directory is not writable; choose a writable place");
}

// The data files of the --files paths, each a file or a directory of them.
std::vector<fs::path> training_files(const std::vector<std::string>& paths) {
  std::vector<fs::path> files;
  for (const auto& path : paths) {
    auto found = data_files(path, "--files");
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

// Feeds every document of the files (.txt: paragraphs, .jsonl: the "text" field, or the prompt
// and the completion) to the trainer; returns {documents, bytes}.
std::pair<int64_t, int64_t> count_words(const std::vector<fs::path>& files, BpeTrainer& trainer) {
  const DataConfig formats{};  // the default .txt and .jsonl layouts of training data
  DocumentReader reader(files, formats);
  Document doc;
  int64_t documents = 0, bytes = 0;
  while (reader.next(doc)) {
    for (const std::string* text : {doc.prompt ? &*doc.prompt : nullptr, &doc.text}) {
      if (!text) continue;
      trainer.add_text(*text);
      bytes += static_cast<int64_t>(text->size());
    }
    ++documents;
  }
  return {documents, bytes};
}

void train_tokenizer(const TrainTokenizerArgs& args) {
  BpeTrainer trainer(args.options);
  const std::vector<fs::path> files = training_files(args.files);
  prepare_out_dir(args.out);
  const auto start = std::chrono::steady_clock::now();
  const auto [documents, bytes] = count_words(files, trainer);
  if (trainer.words_seen() == 0)
    throw InputError(args.files.front(), "the files hold no text to train a tokenizer on");
  const double counted_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("counted {} words ({} distinct) in {} documents, {} bytes, in {:.2f} s",
               trainer.words_seen(), trainer.distinct_words(), documents, bytes, counted_s);
  const TrainedBpe bpe = trainer.train();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (static_cast<int64_t>(bpe.tokens.size()) < args.options.vocab_size)
    spdlog::warn(
        "the text has no more pairs seen at least {} times: the vocabulary holds {} "
        "tokens, not {}",
        args.options.min_frequency, bpe.tokens.size(), args.options.vocab_size);
  write_trained_tokenizer(bpe, args.out);
  load_tokenizer(args.out);  // what was written reads back, or this fails here rather than later
  std::cout << nlohmann::json{{"out", args.out},
                              {"vocab_size", bpe.tokens.size()},
                              {"merges", bpe.merges.size()},
                              {"documents", documents},
                              {"bytes", bytes},
                              {"words", trainer.words_seen()},
                              {"distinct_words", trainer.distinct_words()},
                              {"seconds", seconds}}
                   .dump()
            << std::endl;
}

void add_train_subcommand(CLI::App& parent) {
  auto args = std::make_shared<TrainTokenizerArgs>();
  auto* command = parent.add_subcommand(
      "train", "Train a byte-level BPE tokenizer on text files (docs/tokenizers.md)");
  set_help_footer(*command,
                  "one JSON line {\"out\", \"vocab_size\", \"merges\", \"documents\", \"bytes\", "
                  "\"words\", \"distinct_words\", \"seconds\"}; the directory gets "
                  "tokenizer.json, vocab.json, merges.txt and tokenizer_config.json.");
  command
      ->add_option("--files", args->files,
                   "Training text: .txt (documents between blank lines) or .jsonl ({\"text\"} or "
                   "{\"prompt\", \"completion\"}) files, or directories of them")
      ->required();
  command
      ->add_option("--vocab-size", args->options.vocab_size,
                   "Tokens in all: special tokens + 256 bytes + merges")
      ->required();
  command->add_option("--out", args->out, "New directory to write the tokenizer into")->required();
  command
      ->add_option("--pre-tokenizer", args->options.pre_tokenizer,
                   "How text is cut into words before merging (as the model family of that name)")
      ->capture_default_str()
      ->check(CLI::IsMember(bpe_pre_tokenizer_names()));
  command
      ->add_option("--special-token", args->options.special_tokens,
                   "Special token, ids from 0 in order; the first is EOS (repeatable)")
      ->capture_default_str();
  command
      ->add_option("--min-frequency", args->options.min_frequency,
                   "Merge only pairs seen at least this many times")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  command->callback([args] { train_tokenizer(*args); });
}

void add_extend_subcommand(CLI::App& parent) {
  struct Args {
    std::string model, tokens, out;
  };
  auto args = std::make_shared<Args>();
  auto* command = parent.add_subcommand(
      "extend", "Add domain tokens to a model: its tokenizer and embeddings (docs/tokenizers.md)");
  set_help_footer(*command,
                  "one JSON line {\"out\", \"added\", \"present\", \"first_id\", "
                  "\"old_vocab_size\", \"new_vocab_size\"}; the directory gets the model with "
                  "its tokenizer, in Hugging Face layout.");
  command->add_option("--model", args->model, "Model directory (Hugging Face layout)")->required();
  command
      ->add_option("--tokens", args->tokens,
                   "Text file of tokens, one per line exactly as written (a leading space is "
                   "part of the token)")
      ->required();
  command->add_option("--out", args->out, "New directory to write the extended model into")
      ->required();
  command->callback([args] {
    const std::vector<std::string> tokens = read_token_list(args->tokens);
    const VocabExtension extension = plan_vocabulary_extension(args->model, tokens);
    prepare_out_dir(args->out);
    write_vocabulary_extension(args->model, extension, args->out);
    if (!extension.present.empty())
      spdlog::info("{} of the tokens are already single tokens and were left out",
                   extension.present.size());
    std::cout << nlohmann::json{{"out", args->out},
                                {"added", extension.added},
                                {"present", extension.present},
                                {"first_id", extension.first_id},
                                {"old_vocab_size", extension.old_vocab},
                                {"new_vocab_size", extension.new_vocab}}
                     .dump()
              << std::endl;
  });
}

}  // namespace

void add_tokenizer_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "tokenizer", "Domain tokenizers: train one from text, or add tokens to a model's");
  command->require_subcommand(1);
  add_train_subcommand(*command);
  add_extend_subcommand(*command);
}

}  // namespace lmtune::cli
