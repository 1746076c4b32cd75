// `lmtune train CONFIG [--resume [DIR]] [--set K=V]...`: fine-tunes (or continues a run) and prints
// a one-line JSON summary.
#include <iostream>

#include <spdlog/spdlog.h>
#include "commands.h"

#include "lmtune/train/distributed.h"
#include "lmtune/train/trainer.h"
#include "options.h"

namespace lmtune::cli {
namespace {

nlohmann::json eval_json(const std::optional<EvalResult>& eval) {
  if (!eval) return nullptr;
  return {{"loss", eval->loss}, {"perplexity", eval->perplexity}, {"tokens", eval->tokens}};
}

// Under torchrun every line says which rank wrote it, and ranks other than 0 (whose progress is
// rank 0's) show only warnings and errors. Returns the rank (0 without torchrun).
int64_t tag_logs_with_rank() {
  std::optional<TorchrunEnv> env = torchrun_env();
  if (!env || env->world_size == 1) return 0;
  spdlog::default_logger()->set_pattern(fmt::format("lmtune %^%l%$: rank {}: %v", env->rank));
  if (env->rank != 0) spdlog::set_level(spdlog::level::warn);
  return env->rank;
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "train", "Fine-tune a model as a config says; the run goes to run.output_dir");
  auto options = std::make_shared<ConfigOptions>();
  auto resume = std::make_shared<std::string>();
  auto adapter = std::make_shared<std::string>();
  add_config_options(*command, *options);
  set_help_footer(*command,
                  "a JSON summary line at the end (steps, losses, seconds, final model directory); "
                  "progress goes to stderr and RUN/train.log, metrics to RUN/metrics.jsonl.");
  auto* resume_option =
      command
          ->add_option("--resume", *resume,
                       "Continue from the newest complete checkpoint of the config's run "
                       "directory, or of the given run or checkpoint directory")
          ->expected(0, 1)
          ->type_name("[DIR]");
  command->add_option(
      "--adapter", *adapter,
      "Continue training this LoRA adapter directory (lmtune's or PEFT's): the same "
      "as --set lora.adapter=DIR");
  command->callback([options, resume, resume_option, adapter] {
    const int64_t rank = tag_logs_with_rank();
    std::vector<Override> extra;
    if (!adapter->empty()) extra.push_back({"lora.adapter", *adapter});
    Config config = load_checked_config(*options, Reads::kModelAndData, extra);
    std::optional<std::filesystem::path> resume_from;
    if (resume_option->count() > 0)
      resume_from = resume->empty() ? std::filesystem::path(config.run.output_dir)
                                    : std::filesystem::absolute(*resume);
    Trainer trainer(config, resume_from);
    trainer.setup();
    TrainSummary summary = trainer.train();
    if (rank != 0) return;  // rank 0 reports the run
    std::cout << nlohmann::json{{"steps", summary.steps},
                                {"train_loss", summary.train_loss},
                                {"eval_before", eval_json(summary.first_eval)},
                                {"eval_after", eval_json(summary.last_eval)},
                                {"stopped_early", summary.stopped_early},
                                {"seconds", summary.seconds},
                                {"peak_memory_mb", summary.peak_memory_mb},
                                {"final", config.run.output_dir + "/final"}}
                     .dump()
              << std::endl;
  });
}

}  // namespace lmtune::cli
