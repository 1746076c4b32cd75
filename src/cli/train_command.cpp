// `lmtune train CONFIG [--set K=V]...`: fine-tunes and prints a one-line JSON summary.
#include <iostream>

#include "commands.h"
#include "lmtune/train/trainer.h"
#include "options.h"

namespace lmtune::cli {
namespace {

nlohmann::json eval_json(const std::optional<EvalResult>& eval) {
  if (!eval) return nullptr;
  return {{"loss", eval->loss}, {"perplexity", eval->perplexity}, {"tokens", eval->tokens}};
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "train", "Fine-tune a model as a config says; the run goes to run.output_dir");
  auto options = std::make_shared<ConfigOptions>();
  add_config_options(*command, *options);
  command->callback([options] {
    Config config = load_config(options->file, options->overrides());
    Trainer trainer(config);
    trainer.setup();
    TrainSummary summary = trainer.train();
    std::cout << nlohmann::json{{"steps", summary.steps},
                                {"train_loss", summary.train_loss},
                                {"eval_before", eval_json(summary.first_eval)},
                                {"eval_after", eval_json(summary.last_eval)},
                                {"stopped_early", summary.stopped_early},
                                {"seconds", summary.seconds},
                                {"final", config.run.output_dir + "/final"}}
                     .dump()
              << std::endl;
  });
}

}  // namespace lmtune::cli
