// `lmtune merge --base DIR --adapter DIR --out DIR`: a LoRA adapter folded into its base, written
// as a plain Hugging Face model.
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/lora.h"

namespace lmtune::cli {

void add_merge_command(CLI::App& app) {
  struct Args {
    std::string base, adapter, out;
    int64_t threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* command = app.add_subcommand(
      "merge", "Fold a LoRA adapter (lmtune's or PEFT's) into its base: a plain HF model");
  set_help_footer(*command, "one JSON line {\"out\"} naming the merged model directory.");
  command->add_option("--base", args->base, "The base model directory the adapter was trained on")
      ->required();
  command->add_option("--adapter", args->adapter, "The adapter directory (adapter_config.json)")
      ->required();
  command->add_option("--out", args->out, "Directory to write the merged model to")->required();
  command->add_option("--threads", args->threads, "LibTorch threads; 0 = every core")
      ->capture_default_str();
  command->callback([args] {
    namespace fs = std::filesystem;
    set_threads(args->threads);
    if (fs::exists(args->out) && !fs::is_empty(args->out))
      throw UsageError("--out " + args->out + ": exists and is not empty; choose a new directory");
    // The adapter's own tokenizer when it carries one (lmtune writes it), else the base's.
    const bool own = has_tokenizer_files(args->adapter);
    auto tokenizer = load_tokenizer(own ? args->adapter : args->base);
    write_merged_model(args->base, args->adapter, args->out, tokenizer.get());
    std::cout << nlohmann::json{{"out", args->out}}.dump() << std::endl;
  });
}

}  // namespace lmtune::cli
