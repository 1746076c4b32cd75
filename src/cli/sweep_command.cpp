// `lmtune sweep SWEEP [--resume]`: a hyperparameter search over a base config (docs/sweeps.md);
// prints a one-line JSON summary with the best trial.
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmtune/train/sweep.h"

namespace lmtune::cli {

void add_sweep_command(CLI::App& app) {
  auto file = std::make_shared<std::string>();
  auto resume = std::make_shared<bool>(false);
  auto* command = app.add_subcommand(
      "sweep",
      "Search hyperparameters: trials of a base config, one after another, poor ones "
      "stopped early; resumable");
  set_help_footer(*command,
                  "a JSON summary line at the end (trials by state, the best trial and its "
                  "config); progress goes to stderr and OUTPUT_DIR/sweep.log, trials to "
                  "OUTPUT_DIR/trials.jsonl and summary.md.");
  command->add_option("SWEEP", *file, "Sweep file (.yaml, .yml or .json): base, space, trials, ...")
      ->required();
  command->add_flag("--resume", *resume,
                    "Continue the sweep in the file's output_dir: finished trials are kept, the "
                    "interrupted one continues from its newest checkpoint");
  command->callback([file, resume] {
    Sweep sweep(load_sweep(*file), *resume);
    const SweepResult result = sweep.run();
    nlohmann::json counts = {{"complete", 0}, {"pruned", 0}, {"failed", 0}};
    for (const auto& trial : result.trials)
      if (counts.contains(trial.state)) counts[trial.state] = counts[trial.state].get<int>() + 1;
    nlohmann::json best = nullptr;
    if (result.best) {
      const TrialRecord& trial = result.trials[*result.best];
      best = {{"trial", trial.number},
              {"eval_loss", *trial.value},
              {"params", trial.params},
              {"run_dir", trial.run_dir}};
    }
    const std::filesystem::path& dir = result.output_dir;
    std::cout << nlohmann::json{{"trials", result.trials.size()},
                                {"complete", counts["complete"]},
                                {"pruned", counts["pruned"]},
                                {"failed", counts["failed"]},
                                {"best", best},
                                {"best_config", result.best
                                                    ? nlohmann::json((dir / "best.json").string())
                                                    : nlohmann::json(nullptr)},
                                {"summary", (dir / "summary.md").string()}}
                     .dump()
              << std::endl;
  });
}

}  // namespace lmtune::cli
