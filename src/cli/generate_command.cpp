// `lmtune generate --model DIR --prompt TEXT ...`: prints the prompt's continuation as it is
// generated; with --prompts-file, decodes the prompts in batches and prints a JSON line for each.
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
#include "options.h"

namespace lmtune::cli {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string adapter_dir;
  std::string prompt;
  std::string prompts_file;
  GenerateOptions options;
  int64_t batch_size = 8;
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

// The ids of a prompt to continue; `what` names it in errors.
std::vector<int64_t> checked_prompt_ids(const CausalLM& model, const Tokenizer& tokenizer,
                                        const std::string& text, const std::string& what) {
  if (text.empty()) throw UsageError(what + ": the prompt is empty");
  std::vector<int64_t> ids = prompt_ids(tokenizer, text);
  if (static_cast<int64_t>(ids.size()) >= model->spec().context)
    throw UsageError(what + ": " + std::to_string(ids.size()) +
                     " tokens leave no room in the model's context of " +
                     std::to_string(model->spec().context));
  return ids;
}

// Prints the continuation of --prompt token by token as it is generated (whole characters only),
// then a newline; returns the number of tokens generated.
int64_t stream_continuation(const CausalLM& model, const Tokenizer& tokenizer,
                            const std::string& text, const GenerateOptions& options) {
  const std::vector<int64_t> prompt = checked_prompt_ids(model, tokenizer, text, "--prompt");
  ContinuationStream stream(tokenizer, options.stop_ids);
  const auto produced = generate(model, prompt, options, [&](int64_t token) {
    const std::string piece = stream.add(token);
    if (!piece.empty()) std::cout << piece << std::flush;
  });
  std::cout << stream.finish() << std::endl;
  return static_cast<int64_t>(produced.size());
}

// Continues the prompts of --prompts-file `batch_size` at a time, printing a JSON line per prompt
// in the file's order as each batch finishes; returns the number of tokens generated.
int64_t continue_prompts_file(const CausalLM& model, const Tokenizer& tokenizer,
                              const std::string& path, const GenerateOptions& options,
                              int64_t batch_size) {
  const std::vector<std::string> texts = read_prompts(path);
  std::vector<std::vector<int64_t>> prompts;
  for (std::size_t i = 0; i < texts.size(); ++i)
    prompts.push_back(checked_prompt_ids(model, tokenizer, texts[i],
                                         "--prompts-file: prompt " + std::to_string(i + 1)));
  int64_t produced_tokens = 0;
  for (std::size_t first = 0; first < prompts.size(); first += batch_size) {
    const std::size_t end = std::min(prompts.size(), first + batch_size);
    const std::vector<std::vector<int64_t>> batch(prompts.begin() + first, prompts.begin() + end);
    const auto produced = generate_batch(model, batch, options);
    for (std::size_t b = 0; b < batch.size(); ++b) {
      produced_tokens += static_cast<int64_t>(produced[b].size());
      const std::string completion = continuation_text(tokenizer, produced[b], options.stop_ids);
      std::cout << nlohmann::json{{"prompt", texts[first + b]}, {"completion", completion}}.dump()
                << std::endl;
    }
  }
  return produced_tokens;
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
  const int64_t produced =
      args.prompts_file.empty()
          ? stream_continuation(model, *tokenizer, args.prompt, options)
          : continue_prompts_file(model, *tokenizer, args.prompts_file, options, args.batch_size);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("{} new tokens in {:.2f} s ({:.1f} tokens/s, {}, {} thread(s), KV cache {}{})",
               produced, seconds, produced / std::max(seconds, 1e-9), device.str(),
               torch::get_num_threads(), options.use_cache ? "on" : "off",
               args.prompts_file.empty() ? "" : fmt::format(", batches of {}", args.batch_size));
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* command =
      app.add_subcommand("generate", "Continue a prompt with a model in Hugging Face layout");
  set_help_footer(*command,
                  "the prompt's continuation, token by token as it is generated; with "
                  "--prompts-file, one JSON line {\"prompt\", \"completion\"} per prompt, in "
                  "the file's order.");
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
      ->add_option("--batch-size", args->batch_size,
                   "With --prompts-file: prompts decoded together (left-padded; each gets what it "
                   "gets alone)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
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
      ->check(at_least(0));
  command
      ->add_option("--top-p", args->options.top_p,
                   "Sample from the smallest set with probability P")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  command
      ->add_option("--seed", args->options.seed,
                   "Sampling seed: same seed, same output; every prompt samples from its own "
                   "generator seeded with it, whatever the batch")
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
