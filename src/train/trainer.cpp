#include "lmtune/train/trainer.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/train/setup.h"

namespace lmtune {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

Trainer::Trainer(Config config) : config_(std::move(config)) {}

void Trainer::setup() {
  if (config_.train.precision == Precision::kFp16)
    throw UsageError(
        "train.precision: fp16 needs the dynamic loss scaler, which lmtune does not have "
        "yet; use bf16");
  int64_t threads = set_threads(config_.run.threads);
  device_ = resolve_device(config_.run.device);
  torch::manual_seed(static_cast<uint64_t>(config_.run.seed));
  if (device_.is_cuda()) torch::cuda::manual_seed_all(static_cast<uint64_t>(config_.run.seed));
  spdlog::info("device {}, {} thread(s), precision {}", device_.str(), threads,
               enum_name(config_.train.precision));

  prepare_run_directory();
  tokenizer_ = load_tokenizer(tokenizer_dir(config_));
  model_ = build_model(config_, *tokenizer_, device_);
  data_ = prepare_data(config_.data, *tokenizer_, cache_root(config_));
  log_prepare_report(data_->report);

  const int64_t micro = config_.train.micro_batch_size;
  if (data_->train.num_windows() < micro)
    throw InputError(config_.data.train,
                     "only " + std::to_string(data_->train.num_windows()) +
                         " training windows of " + std::to_string(config_.data.seq_len) +
                         " tokens, fewer than one micro-batch "
                         "(train.micro_batch_size=" +
                         std::to_string(micro) +
                         "); lower data.seq_len or train.micro_batch_size, or add data");
  batcher_ =
      std::make_unique<Batcher>(data_->train, micro, static_cast<uint64_t>(config_.run.seed));
  total_steps_ = config_.train.max_steps;
  if (config_.train.epochs > 0) {
    int64_t micro_batches = config_.train.epochs * batcher_->batches_per_epoch();
    total_steps_ = std::max<int64_t>(1, micro_batches / config_.train.grad_accum_steps);
    progress_->message("train.epochs=" + std::to_string(config_.train.epochs) + " makes " +
                       std::to_string(total_steps_) + " optimizer steps");
  }

  model_->train();
  optimizer_ = std::make_unique<AdamW>(
      decay_groups(*model_, config_.train.weight_decay),
      AdamWOptions{config_.train.beta1, config_.train.beta2, config_.train.eps});
  for (const auto& group : optimizer_->groups())
    params_.insert(params_.end(), group.params.begin(), group.params.end());
  int64_t parameters = 0;
  for (const auto& p : params_) parameters += p.numel();
  progress_->message("model: " + std::to_string(parameters) + " trainable parameters, " +
                     std::to_string(model_->config().n_layer) + " layers");
}

void Trainer::prepare_run_directory() {
  fs::path dir = config_.run.output_dir;
  if (fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "final"))
    throw UsageError("run.output_dir: " + dir.string() +
                     " already holds a run; choose another run.output_dir or remove it");
  fs::create_directories(dir);
  write_file_atomically(dir / "config.json", config_to_json(config_).dump(2) + "\n");
  metrics_ = std::make_unique<MetricsFile>(dir / "metrics.jsonl");
  progress_ = std::make_unique<Progress>(dir / "train.log");
}

Trainer::StepResult Trainer::train_step(double lr) {
  // Loss is averaged over the target tokens of all micro-batches of the step, so accumulating
  // 4 x 2 sequences gives the same gradient as one batch of 8.
  std::vector<Batch> batches;
  int64_t targets = 0;
  for (int64_t i = 0; i < config_.train.grad_accum_steps; ++i) {
    batches.push_back(batcher_->next());
    targets += batches.back().target_tokens;
  }
  auto step_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  for (const auto& batch : batches) {
    auto loss = summed_token_loss(model_, batch, config_.train.precision, device_) /
                static_cast<double>(std::max<int64_t>(targets, 1));
    loss.backward();
    step_loss += loss.detach();
    tokens_seen_ += batch.inputs.numel();
  }
  auto grad_norm = clip_grad_norm(params_, config_.train.max_grad_norm);
  optimizer_->step(lr);
  optimizer_->zero_grad();
  return {step_loss, grad_norm};
}

void Trainer::log_step(int64_t step, const StepResult& result, double lr) {
  // Reading the loss synchronises with the device: only done here, at logging intervals.
  const int64_t steps = step - last_log_step_;
  double loss = interval_loss_.item<double>() / static_cast<double>(std::max<int64_t>(steps, 1));
  double grad_norm = result.grad_norm.item<double>();
  double interval = seconds_since(last_log_time_);
  double tokens_per_sec =
      static_cast<double>(tokens_seen_ - last_log_tokens_) / std::max(interval, 1e-9);
  double elapsed = seconds_since(start_time_);
  double eta = elapsed / static_cast<double>(step) * static_cast<double>(total_steps_ - step);
  metrics_->write({{"step", step},
                   {"loss", loss},
                   {"lr", lr},
                   {"grad_norm", grad_norm},
                   {"tokens", tokens_seen_},
                   {"tokens_per_sec", tokens_per_sec},
                   {"elapsed_s", elapsed}});
  progress_->step_line(
      fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}",
                  step, total_steps_, loss, lr, grad_norm, tokens_per_sec, format_duration(eta)));
  last_logged_loss_ = loss;
  last_log_time_ = Clock::now();
  last_log_tokens_ = tokens_seen_;
  last_log_step_ = step;
  interval_loss_.zero_();
}

std::optional<EvalResult> Trainer::evaluate_and_log(int64_t step) {
  if (data_->validation.num_windows() == 0) return std::nullopt;
  EvalResult result = evaluate(model_, data_->validation, config_.train.micro_batch_size,
                               config_.eval.max_batches, config_.train.precision, device_);
  metrics_->write(
      {{"step", step}, {"eval_loss", result.loss}, {"eval_perplexity", result.perplexity}});
  progress_->message(fmt::format("eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens)",
                                 step, result.loss, result.perplexity, result.tokens));
  return result;
}

TrainSummary Trainer::train() {
  TrainSummary summary;
  start_time_ = last_log_time_ = Clock::now();
  interval_loss_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  summary.first_eval = evaluate_and_log(0);
  std::optional<double> best_eval;
  int64_t evals_without_improvement = 0;

  int64_t step = 0;
  while (step < total_steps_) {
    double lr = learning_rate(config_.train, step);
    StepResult result = train_step(lr);
    interval_loss_ += result.loss;
    ++step;
    if (step % config_.logging.every_steps == 0 || step == total_steps_) log_step(step, result, lr);

    const int64_t every = config_.eval.every_steps;
    if (every > 0 && step % every == 0 && step < total_steps_) {
      auto eval = evaluate_and_log(step);
      if (eval && (!best_eval || eval->loss < *best_eval)) {
        best_eval = eval->loss;
        evals_without_improvement = 0;
      } else if (eval && config_.eval.patience > 0 &&
                 ++evals_without_improvement >= config_.eval.patience) {
        progress_->message(fmt::format("early stop at step {}: no improvement in {} evaluations",
                                       step, config_.eval.patience));
        if (step % config_.logging.every_steps != 0) log_step(step, result, lr);
        summary.stopped_early = true;
        break;
      }
    }
  }
  summary.steps = step;
  summary.train_loss = last_logged_loss_;
  summary.last_eval = evaluate_and_log(step);
  save_final();
  summary.seconds = seconds_since(start_time_);
  progress_->message(fmt::format("done: {} steps in {}, final model in {}", step,
                                 format_duration(summary.seconds),
                                 (fs::path(config_.run.output_dir) / "final").string()));
  return summary;
}

void Trainer::save_final() {
  fs::path final_dir = fs::path(config_.run.output_dir) / "final";
  fs::path tmp = final_dir;
  tmp += ".tmp";
  fs::remove_all(tmp);
  save_gpt2(model_, tmp, tokenizer_.get());
  fs::rename(tmp, final_dir);
}

}  // namespace lmtune
