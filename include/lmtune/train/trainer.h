// The fine-tuning run: setup, the training loop, evaluation, and the final export.
// Writes only inside run.output_dir (and the token cache).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

#include "lmtune/core/config.h"
#include "lmtune/data/dataset.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/metrics.h"
#include "lmtune/train/optim.h"

namespace lmtune {

struct TrainSummary {
  int64_t steps = 0;
  bool stopped_early = false;
  double train_loss = 0;                 // mean over the last logging interval
  std::optional<EvalResult> first_eval;  // before the first step
  std::optional<EvalResult> last_eval;   // after the last step
  double seconds = 0;
};

class Trainer {
 public:
  explicit Trainer(Config config);

  // Resolves the device, loads tokenizer, model and data, builds the optimizer and the run
  // directory. Every input problem surfaces here, before the first step.
  void setup();
  TrainSummary train();

 private:
  struct StepResult {
    torch::Tensor loss;       // mean loss per target token of the step (device scalar)
    torch::Tensor grad_norm;  // before clipping (device scalar)
  };

  void prepare_run_directory();
  StepResult train_step(double lr);
  std::optional<EvalResult> evaluate_and_log(int64_t step);
  void log_step(int64_t step, const StepResult& result, double lr);
  void save_final();

  Config config_;
  torch::Device device_{torch::kCPU};
  std::unique_ptr<Tokenizer> tokenizer_;
  GPT2 model_{nullptr};
  std::optional<PreparedData> data_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<AdamW> optimizer_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<MetricsFile> metrics_;
  std::unique_ptr<Progress> progress_;
  int64_t total_steps_ = 0;
  int64_t tokens_seen_ = 0;

  // For tokens/s and ETA between two logged steps.
  std::chrono::steady_clock::time_point start_time_, last_log_time_;
  int64_t last_log_tokens_ = 0;
  int64_t last_log_step_ = 0;
  torch::Tensor interval_loss_;  // sum of step losses since the last log (device scalar)
  double last_logged_loss_ = 0;
};

}  // namespace lmtune
