// `lmtune tokenize --tokenizer DIR (--text T | --file F)`: prints token ids, times encoding, or
// writes the tokenizer's files.
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"

namespace lmtune::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer_dir;
  std::vector<std::string> texts;
  std::vector<std::string> files;
  std::string save_dir;
  bool bench = false;
  int repeats = 5;
};

std::string read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, "cannot read the input file (does it exist?)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Times encode() alone, best of `repeats`. Each repeat gets a freshly loaded tokenizer, so its
// word cache starts empty, as it does for a new text.
nlohmann::json bench(const std::string& dir, const std::string& text, int repeats) {
  double best = 0;
  std::size_t tokens = 0;
  for (int r = 0; r < repeats; ++r) {
    auto tokenizer = load_tokenizer(dir);
    auto start = std::chrono::steady_clock::now();
    tokens = tokenizer->encode(text).size();
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r == 0 || seconds < best) best = seconds;
  }
  return {{"bytes", text.size()},
          {"tokens", tokens},
          {"seconds", best},
          {"mb_per_sec", static_cast<double>(text.size()) / 1e6 / std::max(best, 1e-9)}};
}

void run(const TokenizeArgs& args) {
  if (args.texts.empty() && args.files.empty() && args.save_dir.empty())
    throw UsageError("tokenize: give --text, --file or --save (see lmtune tokenize --help)");
  std::vector<std::string> inputs = args.texts;
  for (const auto& file : args.files) inputs.push_back(read_input(file));
  auto tokenizer = load_tokenizer(args.tokenizer_dir);
  if (!args.save_dir.empty()) tokenizer->save(args.save_dir);
  for (const auto& text : inputs) {
    nlohmann::json line = args.bench ? bench(args.tokenizer_dir, text, args.repeats)
                                     : nlohmann::json(tokenizer->encode(text));
    std::cout << line.dump() << "\n";
  }
  std::cout.flush();
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* command = app.add_subcommand(
      "tokenize", "Print the token ids of texts as one JSON array per input (or time encoding)");
  set_help_footer(*command,
                  "one JSON array of token ids per --text or --file, in order; with --save, "
                  "nothing but the written files.");
  command
      ->add_option("--tokenizer", args->tokenizer_dir,
                   "Model or tokenizer directory: tokenizer.json, vocab.json + merges.txt, or "
                   "tokenizer.model")
      ->required();
  auto* text = command->add_option("--text", args->texts, "Text to tokenize (repeatable)");
  auto* file = command->add_option("--file", args->files, "File to tokenize whole (repeatable)");
  text->excludes(file);
  command->add_option("--save", args->save_dir,
                      "Write the tokenizer's files into this directory (Hugging Face layout)");
  command->add_flag("--bench", args->bench,
                    "Instead of ids, print {\"bytes\", \"tokens\", \"seconds\", \"mb_per_sec\"}: "
                    "the best single-thread encode time of each input");
  command->add_option("--repeats", args->repeats, "Timed encodes per input with --bench")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  command->callback([args] { run(*args); });
}

}  // namespace lmtune::cli
