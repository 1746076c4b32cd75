// `lmtune sweep`: a hyperparameter search over a base config. Trials run one after another in
// this process, each a normal run directory under the sweep's output_dir; poor trials stop at
// rungs (asynchronous successive halving); the trials, a summary table and the best config are
// rewritten as the sweep goes. A killed sweep resumes: finished trials are kept and the interrupted
// one continues from its newest checkpoint (docs/sweeps.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/logger.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/config.h"
#include "lmtune/train/sweep_sampler.h"

namespace lmtune {

struct PruningOptions {
  bool enabled = false;
  int64_t min_steps = 0;  // rung k is the first evaluation at or after min_steps x factor^k
  int64_t reduction_factor = 3;
};

// A sweep file, read and checked.
struct SweepSpec {
  std::filesystem::path file;
  nlohmann::json base;             // the base config tree
  std::filesystem::path base_dir;  // what the base's relative paths are relative to
  std::string base_source;         // names the base in messages
  std::vector<SearchParam> space;
  int64_t trials = 0;
  SamplerOptions sampler;
  PruningOptions pruning;
  std::filesystem::path output_dir;

  // The definition a resumed sweep must match (everything but `trials`), as sweep.json holds it.
  nlohmann::json definition() const;
};

// Reads a sweep file (.yaml, .yml or .json) and checks it, including that every value the space
// allows gives a valid config. Throws ConfigError listing every problem, each naming the file and
// key.
SweepSpec load_sweep(const std::filesystem::path& file);

// One trial as trials.jsonl records it.
struct TrialRecord {
  int64_t number = 0;             // from 1
  std::string state = "running";  // running, complete, pruned or failed
  nlohmann::json params = nlohmann::json::object();
  std::vector<std::pair<int64_t, double>> rungs;  // (step, eval loss) at each rung reached
  std::optional<double> value;                    // final eval loss; pruned: at its last rung
  int64_t steps = 0;
  double seconds = 0;
  std::string error;  // failed: why
  std::string run_dir;

  bool finished() const { return state != "running"; }
  nlohmann::json to_json() const;
  static TrialRecord from_json(const nlohmann::json& json);
};

struct SweepResult {
  std::vector<TrialRecord> trials;
  std::optional<std::size_t> best;  // index of the complete trial with the lowest eval loss
  std::filesystem::path output_dir;
};

class Sweep {
 public:
  // With `resume`, an output_dir that holds this sweep continues it; without, such a directory is
  // an error.
  Sweep(SweepSpec spec, bool resume);
  SweepResult run();

 private:
  void open_output_dir();
  void log(const std::string& text) const;  // on stderr and in OUTPUT_DIR/sweep.log
  int64_t rung_step(std::size_t rung) const;
  void run_trial(TrialRecord& record);
  bool judge(TrialRecord& record, int64_t step, double eval_loss);
  Config trial_config(const TrialRecord& record) const;
  std::vector<Observation> history(std::size_t before) const;
  std::optional<std::size_t> best_trial() const;
  void write_files() const;

  SweepSpec spec_;
  bool resume_ = false;
  std::vector<TrialRecord> records_;
  std::shared_ptr<spdlog::logger> log_file_;
};

}  // namespace lmtune
