// Training checkpoints: step directories written atomically with a completeness marker, finding
// and validating them for --resume, restoring their state, and retention.
// Never deletes a checkpoint before a newer one is complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lmtune/data/dataset.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/setup.h"

namespace lmtune {

class Tokenizer;

// Bumped whenever the meaning of a checkpoint's files changes.
inline constexpr int kCheckpointFormatVersion = 1;

// Everything besides weights and optimizer moments that a resumed run needs to continue exactly.
// Optional fields may be missing from older checkpoints.
struct TrainerState {
  int64_t step = 0;             // optimizer steps done
  BatchPosition data_position;  // where the batcher stands in the shuffled order
  int64_t tokens_seen = 0;
  double lr = 0;  // learning rate of the last step (the schedule is a function of step)
  nlohmann::json loss_scaler;                // fp16 dynamic loss scaler state; null when unused
  std::string cpu_rng_state;                 // hex of the default CPU generator's state
  std::vector<std::string> cuda_rng_states;  // hex, per visible CUDA device
  std::optional<double> best_eval_loss;
  int64_t evals_without_improvement = 0;
  std::optional<double> eval_loss;  // evaluation at this very step, when there was one
  double interval_loss = 0;         // sum of step losses since the last logged step
  int64_t last_log_step = 0;
  // With distillation: sums of the steps' (CE, KL) terms since the last logged step.
  std::optional<std::vector<double>> interval_terms;
  double elapsed_s = 0;   // training time before this checkpoint
  nlohmann::json config;  // the resolved config
  std::string config_hash;
  // With adapters: HfWeights::fingerprint() of the frozen base they were trained on.
  std::optional<std::string> base_fingerprint;
  // Data parallel: the ranks that trained it (absent in single-process checkpoints).
  std::optional<int64_t> world_size;

  // Every field once, with its place in trainer_state.json (a JSON pointer): to_json and from_json
  // both walk this list, so a new field is one line here.
  template <class V>
  void visit(V& v) {
    v(step, "/step");
    v(data_position.epoch, "/data_position/epoch");
    v(data_position.index, "/data_position/index");
    v(tokens_seen, "/tokens_seen");
    v(lr, "/lr_schedule/lr");
    v(loss_scaler, "/loss_scaler");
    v(cpu_rng_state, "/rng/cpu");
    v(cuda_rng_states, "/rng/cuda");
    v(best_eval_loss, "/best_eval_loss");
    v(evals_without_improvement, "/evals_without_improvement");
    v(eval_loss, "/eval_loss");
    v(interval_loss, "/logging/interval_loss");
    v(last_log_step, "/logging/last_log_step");
    v(interval_terms, "/logging/interval_terms");
    v(elapsed_s, "/elapsed_s");
    v(config, "/config");
    v(config_hash, "/config_hash");
    v(base_fingerprint, "/base/fingerprint");
    v(world_size, "/distributed/world_size");
  }

  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& json, const std::string& file);
};

// The default CPU (and CUDA) generators' states, and restoring them.
void capture_rng_state(TrainerState& state);
void restore_rng_state(const TrainerState& state);

// The hash of a resolved config, as stored in trainer_state.json.
std::string config_hash(const nlohmann::json& config);

// checkpoints/step-00000100 for step 100.
std::filesystem::path checkpoint_dir(const std::filesystem::path& run_dir, int64_t step);

// Writes checkpoints/step-XXXXXXXX in a temporary directory (every file fsynced, COMPLETE with a
// checksum of each file written last), then renames it into place. A failure (a full disk)
// throws Error and leaves every earlier checkpoint untouched. The model part is the whole model
// in HF layout, or with `adapter` only the adapter (PEFT's layout) and the modules it trains.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const CausalLM& model,
                                      const Tokenizer& tokenizer, const AdamW& optimizer,
                                      const TrainerState& state,
                                      const AdapterSetup* adapter = nullptr);

// Reads and validates a checkpoint directory: COMPLETE present, every checksum matching,
// trainer_state.json readable. Throws InputError saying what is wrong.
TrainerState read_checkpoint(const std::filesystem::path& dir);

// The checkpoint to resume from, given a run directory or a checkpoint directory: the newest
// valid one. Invalid ones are skipped with a warning saying why; none is InputError (exit 3).
std::filesystem::path find_resume_checkpoint(const std::filesystem::path& run_or_checkpoint);

// The step of the newest checkpoint of `run_dir` that carries its completeness marker (its files
// are not verified), or nullopt when there is none.
std::optional<int64_t> newest_complete_step(const std::filesystem::path& run_dir);

// Copies the checkpoint's weights (the whole model, or with `adapter` the adapter's) into `model`
// and moments into `optimizer` (any device).
void load_checkpoint_weights(const std::filesystem::path& dir, const CausalLM& model,
                             AdamW& optimizer, const AdapterSetup* adapter = nullptr);

// The config keys whose saved and new values differ and that change the maths of training (the
// run cannot resume with them), and those that may change (returned separately for logging).
struct ConfigChanges {
  std::vector<std::string> refused;   // "train.lr: 0.0003 -> 0.0001"
  std::vector<std::string> accepted;  // "train.max_steps: 100 -> 200"
};
ConfigChanges compare_configs(const nlohmann::json& saved, const nlohmann::json& now);

// Deletes complete checkpoints beyond the `keep_last` newest, except the best by validation
// loss, and leftovers of interrupted saves.
void apply_retention(const std::filesystem::path& run_dir, int64_t keep_last);

}  // namespace lmtune
