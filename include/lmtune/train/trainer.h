// The fine-tuning run: setup, the training loop, evaluation, and the final export.
// Writes only inside run.output_dir (and the token cache).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/io/file_lock.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/causal_lm.h"
#include "lmtune/train/checkpoint.h"
#include "lmtune/train/distributed.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/loss_scaler.h"
#include "lmtune/train/metrics.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/setup.h"
#include "lmtune/train/tensorboard.h"
#include "lmtune/train/training_step.h"

namespace lmtune {

struct TrainSummary {
  int64_t steps = 0;
  bool stopped_early = false;
  bool pruned = false;                   // stopped by the evaluation judge (a sweep's pruning)
  double train_loss = 0;                 // mean over the last logging interval
  std::optional<EvalResult> first_eval;  // before the first step
  std::optional<EvalResult> last_eval;   // after the last step
  double seconds = 0;
  double peak_memory_mb = 0;  // measured at the end (train/memory.h)
};

class Trainer {
 public:
  // With `resume_from` (a run or checkpoint directory), setup() continues from its newest valid
  // checkpoint instead of starting fresh.
  explicit Trainer(Config config, std::optional<std::filesystem::path> resume_from = std::nullopt);

  // Resolves the device, loads tokenizer, model and data, builds the optimizer and the run
  // directory, and restores a checkpoint when resuming. Every input problem surfaces here,
  // before the first step.
  void setup();
  // Trains to the last step. Throws Interrupted (exit 130) after saving a checkpoint when
  // SIGINT/SIGTERM arrives.
  TrainSummary train();

  // Called after each evaluation during training (not the one before the first step, nor the one
  // after the last); when it returns true the run stops there, as a sweep prunes a trial: nothing
  // more is saved, no final model is written, and train() returns with `pruned` set.
  void judge_evaluations(std::function<bool(int64_t step, double eval_loss)> judge) {
    judge_ = std::move(judge);
  }

  // The fp16 loss scaler (nullptr for bf16 and fp32); its state belongs in a checkpoint.
  LossScaler* loss_scaler() { return scaler_.get(); }

 private:
  void join_ranks();
  bool main_rank() const;
  int64_t world_size() const;
  void agree_on_auto_choices();
  void log_data_parallel();
  void log_overlap(const GradientSync& sync);
  void accept_new_world_size(TrainerState& saved, const std::filesystem::path& dir) const;
  Batch rank_share(const Batch& global) const;
  std::pair<bool, bool> agree_on_stop(bool signalled, bool save_due);
  void prepare_run_directory();
  void log_adapter();
  void resume();
  TrainingStep::Result train_step(double lr);
  void setup_memory_levers();
  void setup_distillation();
  void check_nonfinite_streak() const;
  bool checkpoint_due(bool last_step) const;
  void save_checkpoint_now(const std::optional<EvalResult>& eval);
  void release_cpu_copies();
  // Records an evaluation for early stopping; true when training should stop.
  bool patience_exhausted(const EvalResult& eval);
  bool stopped_early_before();
  std::optional<EvalResult> evaluate_and_log(int64_t step);
  void log_samples(int64_t step);
  void log_step(int64_t step, const TrainingStep::Result& result, double lr);
  // The batcher of data.order; with a curriculum, its ranking and pace (logged).
  void make_batcher(int64_t micro);
  std::vector<double> curriculum_scores() const;  // per window, by data.curriculum_score
  void open_tensorboard();
  // One metrics.jsonl record, and its values as TensorBoard scalars at its step.
  void write_record(const nlohmann::json& record);
  void save_final();

  Config config_;
  std::optional<std::filesystem::path> resume_from_;
  std::function<bool(int64_t, double)> judge_;
  // run.output_dir's lock, held from setup to the end (declared first, so released last).
  std::optional<FileLock> run_lock_;
  torch::Device device_{torch::kCPU};
  std::unique_ptr<Distributed> group_;  // data parallel under torchrun
  std::unique_ptr<Tokenizer> tokenizer_;
  CausalLM model_;
  CausalLM teacher_;                     // with distill.teacher
  std::optional<AdapterSetup> adapter_;  // with lora.enabled
  std::optional<PreparedData> data_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<LossScaler> scaler_;           // fp16 only
  std::unique_ptr<TrainingStep> training_step_;  // uses optimizer_ and scaler_: declared after
  std::unique_ptr<NonFiniteStreak> nonfinite_;
  int64_t loss_chunk_tokens_ = 0;  // 0 = the plain loss
  std::unique_ptr<MetricsFile> metrics_;
  std::unique_ptr<EventFileWriter> tensorboard_;  // with logging.tensorboard
  std::unique_ptr<Progress> progress_;
  int64_t total_steps_ = 0;
  // The run's progress as a checkpoint saves it (step, data position, counters, ...), kept up to
  // date as training goes and restored whole on resume.
  TrainerState state_;
  int64_t first_step_ = 0;     // state_.step when this session's training began
  int64_t saved_step_ = -1;    // step of the newest checkpoint written or resumed from
  int64_t rerun_until_ = 0;    // steps up to this one were logged before a crash: marked rerun
  double elapsed_before_ = 0;  // training seconds of earlier sessions of a resumed run
  std::chrono::steady_clock::time_point last_save_time_;

  // For tokens/s and ETA between two logged steps.
  std::chrono::steady_clock::time_point start_time_, last_log_time_;
  int64_t last_log_tokens_ = 0;
  torch::Tensor interval_loss_;   // sum of step losses since the last log (device scalar)
  torch::Tensor interval_terms_;  // with distillation: the same of the (CE, KL) terms, (2)
  double last_logged_loss_ = 0;
  double comm_wait_s_ = 0;  // data parallel: seconds waited for gradients since the last log
};

}  // namespace lmtune
