// `lmtune generate --model DIR --prompt TEXT ...`: prints the prompt's continuation.
#include <chrono>
#include <fstream>
#include <iostream>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/infer/generate.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/train/setup.h"

namespace lmtune::cli {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string adapter_dir;
  std::string prompt;
  std::string prompts_file;
  GenerateOptions options;
  int64_t threads = 0;
  std::string device = "auto";
  bool no_cache = false;
};

// The prompts of a .jsonl file (one {"prompt": ...} object per line).
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path, "cannot read the prompts file");
  std::vector<std::string> prompts;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_object() || !row.contains("prompt") || !row["prompt"].is_string())
      throw InputError(path + ":" + std::to_string(number),
                       "expected a JSON object with a string \"prompt\"");
    prompts.push_back(row["prompt"].get<std::string>());
  }
  return prompts;
}

// The continuation of one prompt as valid UTF-8, without the end-of-text token that stopped it.
std::string continue_prompt(const CausalLM& model, const Tokenizer& tokenizer,
                            const std::string& text, const GenerateOptions& options,
                            int64_t& produced_tokens) {
  if (text.empty()) throw UsageError("--prompt: the prompt is empty");
  const std::vector<int64_t> prompt = prompt_ids(tokenizer, text);
  if (static_cast<int64_t>(prompt.size()) >= model->spec().context)
    throw UsageError("--prompt: " + std::to_string(prompt.size()) +
                     " tokens leave no room in the model's context of " +
                     std::to_string(model->spec().context));
  auto produced = generate(model, prompt, options);
  produced_tokens += static_cast<int64_t>(produced.size());
  return continuation_text(tokenizer, std::move(produced), options.stop_ids);
}

void run(const GenerateArgs& args) {
  set_threads(args.threads);
  torch::Device device = resolve_device(*enum_from_name<Device>(args.device), "--device");
  const ModelSource source = resolve_model_source(args.model_dir, args.adapter_dir);
  // An adapter directory written by lmtune carries the tokenizer it was trained with.
  const bool adapter_tokenizer = !source.adapter.empty() && has_tokenizer_files(source.adapter);
  auto tokenizer = load_tokenizer(adapter_tokenizer ? source.adapter : source.base);
  CausalLM model = load_causal_lm(source.base);
  if (!source.adapter.empty()) {
    load_adapter(*model, source.adapter);
    merge_lora(*model);  // the same outputs, at the base's speed
  }
  model->to(device);
  GenerateOptions options = args.options;
  options.stop_ids = end_of_sequence_ids(source.base, model->spec(), tokenizer->eos_id());
  options.use_cache = !args.no_cache;

  auto start = std::chrono::steady_clock::now();
  int64_t produced = 0;
  if (args.prompts_file.empty()) {
    std::cout << continue_prompt(model, *tokenizer, args.prompt, options, produced) << std::endl;
  } else {
    for (const auto& prompt : read_prompts(args.prompts_file)) {
      std::string completion = continue_prompt(model, *tokenizer, prompt, options, produced);
      std::cout << nlohmann::json{{"prompt", prompt}, {"completion", completion}}.dump()
                << std::endl;
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{} new tokens in {:.2f} s ({:.1f} tokens/s, {}, {} thread(s), KV cache {})",
               produced, seconds, produced / std::max(seconds, 1e-9), device.str(),
               torch::get_num_threads(), options.use_cache ? "on" : "off");
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* command =
      app.add_subcommand("generate", "Continue a prompt with a model in Hugging Face layout");
  set_help_footer(*command,
                  "the prompt followed by its continuation; with --prompts-file, one JSON line "
                  "{\"prompt\", \"completion\"} per prompt.");
  command
      ->add_option("--model", args->model_dir,
                   "Model directory (config.json, model.safetensors, tokenizer), or a LoRA "
                   "adapter directory whose adapter_config.json names its base")
      ->required();
  command->add_option("--adapter", args->adapter_dir,
                      "A LoRA adapter directory (lmtune's or PEFT's) applied over --model");
  auto* prompt = command->add_option("--prompt", args->prompt, "Text to continue");
  auto* prompts =
      command->add_option("--prompts-file", args->prompts_file,
                          "A .jsonl file of {\"prompt\": ...} lines: prints one JSON line "
                          "{\"prompt\", \"completion\"} for each");
  prompt->excludes(prompts);
  command
      ->add_option("--max-new-tokens", args->options.max_new_tokens, "Tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  command
      ->add_option("--temperature", args->options.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  command
      ->add_option("--top-k", args->options.top_k, "Sample from the K most likely tokens; 0 = all")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  command
      ->add_option("--top-p", args->options.top_p,
                   "Sample from the smallest set with probability P")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  command->add_option("--seed", args->options.seed, "Sampling seed: same seed, same output")
      ->capture_default_str();
  command->add_option("--threads", args->threads, "LibTorch threads; 0 = every core")
      ->capture_default_str();
  command->add_option("--device", args->device, "auto, cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  command->add_flag("--no-cache", args->no_cache,
                    "Recompute the whole sequence each step (slower; for checks)");
  command->callback([args, prompt, prompts] {
    if (prompt->count() == 0 && prompts->count() == 0)
      throw UsageError("generate: give --prompt or --prompts-file");
    run(*args);
  });
}

}  // namespace lmtune::cli
