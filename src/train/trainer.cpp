#include "lmtune/train/trainer.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/host_allocator.h"
#include "lmtune/core/runtime.h"
#include "lmtune/core/test_hooks.h"
#include "lmtune/infer/generate.h"
#include "lmtune/io/atomic_file.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/activation_checkpoint.h"
#include "lmtune/model/attention.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/train/freeze.h"
#include "lmtune/train/memory.h"
#include "lmtune/train/plan.h"
#include "lmtune/train/precision.h"
#include "lmtune/train/setup.h"
#include "lmtune/train/signals.h"

namespace lmtune {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The highest step metrics.jsonl already records: steps up to it are being run again.
int64_t last_logged_step(const fs::path& metrics_file) {
  std::ifstream in(metrics_file);
  int64_t last = 0;
  std::string line;
  while (std::getline(in, line)) {
    auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.contains("step") && record["step"].is_number_integer())
      last = std::max(last, record["step"].get<int64_t>());
  }
  return last;
}

// metrics.jsonl fields and the TensorBoard scalar tags that plot them.
constexpr std::pair<const char*, const char*> kTensorBoardScalars[] = {
    {"loss", "train/loss"},
    {"lr", "train/lr"},
    {"grad_norm", "train/grad_norm"},
    {"tokens_per_sec", "train/tokens_per_sec"},
    {"loss_scale", "train/loss_scale"},
    {"loss_ce", "train/loss_ce"},
    {"loss_kl", "train/loss_kl"},
    {"eval_loss", "eval/loss"},
    {"eval_perplexity", "eval/perplexity"},
    {"peak_memory_mb", "memory/peak_mb"}};

// A sample of eval.sample_prompts for TensorBoard's text dashboard (Markdown).
std::string sample_markdown(const std::string& prompt, const std::string& continuation) {
  return "**prompt**\n\n" + markdown_code_block(prompt) + "\n\n**continuation**\n\n" +
         markdown_code_block(continuation);
}

// Logs the fp16 steps skipped since `since` and returns the loss scale now (both synchronise).
double log_loss_scale(LossScaler& scaler, Progress& progress, int64_t since) {
  const double scale = scaler.state().scale;
  if (int64_t skipped = scaler.take_skipped_steps(); skipped > 0)
    progress.message(
        fmt::format("fp16: {} step(s) after step {} skipped for inf/NaN gradients; "
                    "loss scale lowered to {:g}",
                    skipped, since, scale));
  return scale;
}

// Test hook: LMTUNE_TEST_NAN_STEPS=3,4 makes those steps numerically broken, as a bad batch or a
// diverging model would: while the step runs, the token embedding of its first input token is NaN
// (restored afterwards), so its loss and every gradient are NaN. Tests check through it that such
// a step is skipped and that train.max_nonfinite_steps stops the run.
class NanForTesting {
 public:
  NanForTesting(CausalLMImpl& model, const Batch& batch, int64_t step) {
    const char* steps = std::getenv("LMTUNE_TEST_NAN_STEPS");
    if (!steps || !listed(steps, step)) return;
    torch::NoGradGuard no_grad;
    row_ = model.embedding_parameters().front()[batch.inputs[0][0].item<int64_t>()];
    saved_ = row_.clone();
    row_.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  ~NanForTesting() {
    if (!row_.defined()) return;
    torch::NoGradGuard no_grad;
    row_.copy_(saved_);
  }
  NanForTesting(const NanForTesting&) = delete;
  NanForTesting& operator=(const NanForTesting&) = delete;

 private:
  static bool listed(const std::string& steps, int64_t step) {
    std::size_t start = 0;
    while (start <= steps.size()) {
      const std::size_t end = std::min(steps.find(',', start), steps.size());
      if (steps.substr(start, end - start) == std::to_string(step)) return true;
      start = end + 1;
    }
    return false;
  }
  torch::Tensor row_, saved_;
};

// The run directory's lock file (io/file_lock.h): it holds the pid of the process training there.
constexpr const char* kRunLockFile = "LOCK";

// One process writes a run directory for its whole life: a second start on it (two jobs launched
// together, or a --resume while the first still runs) stops here, before it reads or writes
// anything there.
FileLock lock_run_directory(const fs::path& dir) {
  fs::create_directories(dir);
  pid_t holder = 0;
  auto lock = FileLock::try_lock(dir / kRunLockFile, holder);
  if (!lock)
    throw UsageError("run.output_dir: " + dir.string() + " is in use by another lmtune process" +
                     (holder > 0 ? " (pid " + std::to_string(holder) + ")" : std::string()) +
                     "; wait for it to end or stop it, or choose another run.output_dir");
  return std::move(*lock);
}

// A run directory is worth protecting once it holds a complete checkpoint or a final model. One
// left by a start that failed before its first save (a typo, a bad data line, Ctrl-C while
// loading) is taken over by the next start: its metrics and unfinished checkpoints go, its log
// and any token cache inside it stay. Returns what was taken over, for the log.
std::string claim_run_directory(const fs::path& dir) {
  const auto step = newest_complete_step(dir);
  if (step || fs::exists(dir / "final"))
    throw UsageError(
        "run.output_dir: " + dir.string() + " already holds a run (" +
        (step ? "checkpoint at step " + std::to_string(*step) : std::string("a final model")) +
        "); continue it with lmtune train CONFIG --resume, or choose another run.output_dir, or "
        "delete the directory to start over");
  if (!fs::exists(dir / "metrics.jsonl") && !fs::exists(dir / "checkpoints") &&
      !fs::exists(dir / "tensorboard"))
    return "";
  fs::remove(dir / "metrics.jsonl");
  remove_tree(dir / "checkpoints");
  remove_tree(dir / "tensorboard");
  return "taking over " + dir.string() +
         ": it holds no complete checkpoint (an earlier start ended before its first save)";
}

}  // namespace

Trainer::Trainer(Config config, std::optional<fs::path> resume_from)
    : config_(std::move(config)), resume_from_(std::move(resume_from)) {}

void Trainer::setup() {
  ExitOnSignal setting_up;  // nothing to save before the first step: Ctrl-C just exits
  int64_t threads = set_threads(config_.run.threads);
  device_ = resolve_device(config_.run.device);
  join_ranks();
  if (main_rank()) run_lock_ = lock_run_directory(config_.run.output_dir);
  if (config_.train.precision == Precision::kFp16 && !device_.is_cuda())
    throw ConfigError({"train.precision: fp16 needs a CUDA device, and run.device: " +
                       std::string(enum_name(config_.run.device)) +
                       " resolved to the CPU; use bf16 on the CPU"});
  torch::manual_seed(static_cast<uint64_t>(config_.run.seed));
  if (device_.is_cuda()) torch::cuda::manual_seed_all(static_cast<uint64_t>(config_.run.seed));
  const std::string precision = resolve_auto_precision(config_, device_, resume_from_);
  spdlog::info("device {}, {} thread(s), precision {}", device_.str(), threads,
               enum_name(config_.train.precision));

  const std::string micro_batch = resolve_auto_micro_batch(config_, device_, resume_from_);
  agree_on_auto_choices();
  prepare_run_directory();
  for (const std::string& chosen : {precision, micro_batch})
    if (!chosen.empty()) progress_->message(chosen);
  if (group_) log_data_parallel();
  tokenizer_ = load_tokenizer(tokenizer_dir(config_));
  BuiltModel built = build_model(config_, *tokenizer_, device_);
  model_ = built.model;
  adapter_ = std::move(built.adapter);
  if (adapter_) log_adapter();
  if (built.quantized_bytes > 0)
    progress_->message(fmt::format("model.quantize: {}: the base's linear weights take {:.1f} MB",
                                   enum_name(config_.model.quantize),
                                   static_cast<double>(built.quantized_bytes) / (1 << 20)));
  setup_memory_levers();
  data_ = prepare_data(config_.data, *tokenizer_, cache_root(config_));
  log_prepare_report(data_->report);

  // Every rank draws the same global micro-batches (world size x micro-batch) and trains its share.
  const int64_t micro = config_.train.micro_batch_size * world_size();
  if (data_->train.num_windows() < micro)
    throw InputError(
        config_.data.train,
        "only " + std::to_string(data_->train.num_windows()) + " training windows of " +
            std::to_string(config_.data.seq_len) +
            " tokens, fewer than one micro-batch "
            "(train.micro_batch_size=" +
            std::to_string(config_.train.micro_batch_size) +
            (group_ ? " on each of " + std::to_string(world_size()) + " ranks" : std::string()) +
            "); lower data.seq_len or train.micro_batch_size, or add data");
  total_steps_ = config_.train.max_steps;
  if (config_.train.epochs > 0) {
    int64_t micro_batches = config_.train.epochs * (data_->train.num_windows() / micro);
    total_steps_ = std::max<int64_t>(1, micro_batches / config_.train.grad_accum_steps);
    progress_->message("train.epochs=" + std::to_string(config_.train.epochs) + " makes " +
                       std::to_string(total_steps_) + " optimizer steps");
  }
  if (config_.train.warmup_steps > total_steps_)
    progress_->message(fmt::format(
        "train.warmup_steps ({}) is longer than the run ({} steps): the learning rate rises to "
        "{:.3g} at the last step and never reaches train.lr ({:g})",
        config_.train.warmup_steps, total_steps_, learning_rate(config_.train, total_steps_ - 1),
        config_.train.lr));

  make_batcher(micro);

  model_->train();
  optimizer_ = std::make_unique<AdamW>(
      decay_groups(*model_, config_.train.weight_decay),
      AdamWOptions{config_.train.beta1, config_.train.beta2, config_.train.eps});
  training_step_ = std::make_unique<TrainingStep>(
      model_, *optimizer_,
      StepSettings{config_.train.precision, device_, loss_chunk_tokens_,
                   config_.train.max_grad_norm, config_.train.fused_clipping,
                   config_.train.fused_loss},
      scaler_.get());
  if (group_) training_step_->distribute(*group_);
  if (!config_.distill.teacher.empty()) setup_distillation();
  int64_t parameters = 0;
  for (const auto& p : training_step_->parameters()) parameters += p.numel();
  progress_->message("model: " + std::to_string(parameters) + " trainable parameters, " +
                     std::to_string(model_->spec().n_layer) + " layers");
  state_.config = config_to_json(config_);
  state_.config_hash = config_hash(state_.config);
  if (adapter_) state_.base_fingerprint = HfWeights(config_.model.path).fingerprint();
  state_.world_size = world_size();
  if (resume_from_) resume();
  release_cpu_copies();
}

// Under torchrun (WORLD_SIZE > 1) every rank joins one process group before anything else, each
// on its own GPU. A worker group that torchrun restarted after a failure continues from the newest
// complete checkpoint by itself.
void Trainer::join_ranks() {
  std::optional<TorchrunEnv> env = torchrun_env();
  if (!env || env->world_size == 1) return;
  if (device_.is_cuda()) {
    if (env->local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
      throw UsageError(fmt::format(
          "LOCAL_RANK {} has no GPU of its own: {} visible; start at most that many processes "
          "per node (torchrun --nproc-per-node)",
          env->local_rank, torch::cuda::device_count()));
    device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env->local_rank));
  }
  group_ = std::make_unique<Distributed>(*env, device_,
                                         std::chrono::seconds(config_.run.dist_timeout_s));
  if (!resume_from_ && env->restart_count > 0 && newest_complete_step(config_.run.output_dir)) {
    resume_from_ = fs::path(config_.run.output_dir);
    spdlog::warn(
        "torchrun restarted the workers (attempt {}): resuming from the newest complete "
        "checkpoint",
        env->restart_count);
  }
}

bool Trainer::main_rank() const {
  return !group_ || group_->is_main();
}

int64_t Trainer::world_size() const {
  return group_ ? group_->world_size() : 1;
}

// precision: auto and micro_batch_size: auto are measured on each rank; all ranks take rank 0's
// choice, as they must train the same step.
void Trainer::agree_on_auto_choices() {
  if (!group_) return;
  auto choices =
      torch::tensor({static_cast<int64_t>(config_.train.precision), config_.train.micro_batch_size},
                    torch::TensorOptions().dtype(torch::kInt64).device(device_));
  group_->broadcast_from_main(choices, "agreeing on train.precision and micro_batch_size");
  auto host = choices.cpu();
  config_.train.precision = static_cast<Precision>(host[0].item<int64_t>());
  config_.train.micro_batch_size = host[1].item<int64_t>();
}

void Trainer::log_data_parallel() {
  const int64_t micro = config_.train.micro_batch_size, ranks = world_size();
  progress_->message(fmt::format(
      "data parallel: {} ranks ({}), {} x {} = {} sequences per micro-step, {} x {} x {} = {} per "
      "optimizer step; rank 0 writes the run directory",
      ranks, group_->backend_name(), ranks, micro, ranks * micro, ranks, micro,
      config_.train.grad_accum_steps, ranks * micro * config_.train.grad_accum_steps));
}

// The first step's gradient all-reduce, as evidence that it overlaps backward.
void Trainer::log_overlap(const GradientSync& sync) {
  progress_->message(fmt::format(
      "gradient all-reduce: {} bucket(s), {} started during backward; {:.1f} ms waited after it",
      sync.buckets(), sync.started_in_backward(), 1e3 * sync.wait_seconds()));
}

// A checkpoint resumes on any number of ranks as long as a micro-step trains as many sequences
// (world size x train.micro_batch_size): the data order and position are global.
void Trainer::accept_new_world_size(TrainerState& saved, const fs::path& dir) const {
  const int64_t saved_ranks = saved.world_size.value_or(1);
  if (saved_ranks == world_size()) return;
  const int64_t saved_micro =
      saved.config.value(nlohmann::json::json_pointer("/train/micro_batch_size"), int64_t{0});
  const int64_t micro = config_.train.micro_batch_size;
  if (saved_ranks * saved_micro != world_size() * micro)
    throw ConfigError({fmt::format(
        "--resume: {} was trained on {} rank(s) x train.micro_batch_size {} = {} sequences per "
        "micro-step, and this run has {} x {} = {}; set train.micro_batch_size to {} to continue "
        "it on {} rank(s)",
        dir.string(), saved_ranks, saved_micro, saved_ranks * saved_micro, world_size(), micro,
        world_size() * micro,
        (saved_ranks * saved_micro) % world_size() == 0
            ? std::to_string(saved_ranks * saved_micro / world_size())
            : "a value that makes the same product",
        world_size())});
  progress_->message(
      fmt::format("resume: {} rank(s) continue a run trained on {}", world_size(), saved_ranks));
  saved.config["train"]["micro_batch_size"] = micro;
}

// This rank's rows of a global micro-batch: rank r trains rows [r*b, (r+1)*b).
Batch Trainer::rank_share(const Batch& global) const {
  const int64_t micro = config_.train.micro_batch_size;
  Batch share;
  share.inputs = global.inputs.narrow(0, group_->rank() * micro, micro);    // (b, T)
  share.targets = global.targets.narrow(0, group_->rank() * micro, micro);  // (b, T)
  share.target_tokens = share.targets.ne(-100).sum().item<int64_t>();
  return share;
}

// Whether to stop (a signal reached any rank) and to save by time (rank 0's clock decides):
// every rank must take the same branch, or the next collective would wait forever.
std::pair<bool, bool> Trainer::agree_on_stop(bool signalled, bool save_due) {
  if (!group_) return {signalled, save_due};
  auto flags = torch::tensor({signalled ? 1 : 0, save_due && main_rank() ? 1 : 0},
                             torch::TensorOptions().dtype(torch::kInt64).device(device_));
  group_->all_reduce_max(flags, "agreeing on checkpoints and signals");
  auto host = flags.cpu();
  return {host[0].item<int64_t>() > 0, host[1].item<int64_t>() > 0};
}

void Trainer::log_adapter() {
  const AdapterSummary& s = adapter_->summary;
  progress_->message(fmt::format(
      "lora: rank {} (alpha {:g}{}) on {} layers ({}), {} adapter parameters{}; the base is frozen",
      adapter_->spec.r, adapter_->spec.alpha, adapter_->spec.use_rslora ? ", rsLoRA" : "",
      s.adapted_layers, fmt::join(s.target_names, ", "), s.adapter_parameters,
      s.saved_module_parameters > 0
          ? fmt::format(", {} in modules_to_save", s.saved_module_parameters)
          : std::string()));
  if (!config_.lora.adapter.empty())
    progress_->message("lora: continuing the adapter in " + config_.lora.adapter);
}

// With the model on a GPU, the large CPU tensors of loading and saving (the weights as read, a
// checkpoint's copies of every weight and moment) do not recur until the next save: their memory
// goes back to the system rather than stay idle in the CPU cache.
void Trainer::release_cpu_copies() {
  if (!device_.is_cpu()) trim_host_cache();
}

void Trainer::resume() {
  fs::path dir = find_resume_checkpoint(*resume_from_);
  TrainerState saved = read_checkpoint(dir);
  accept_new_world_size(saved, dir);
  // Read through today's schema, a checkpoint of an earlier version differs only where its
  // values do, not by the keys added since.
  ConfigChanges changes =
      compare_configs(with_current_defaults(saved.config), config_to_json(config_));
  if (!changes.refused.empty()) {
    std::vector<std::string> problems;
    for (const auto& change : changes.refused)
      problems.push_back("--resume: " + change +
                         " differs from the checkpoint's config; this key "
                         "changes the maths of training, so the run cannot continue with it");
    throw ConfigError(problems);
  }
  for (const auto& change : changes.accepted)
    progress_->message("resume: taking the new " + change);

  if (saved.base_fingerprint != state_.base_fingerprint)
    throw InputError(config_.model.path,
                     "is not the base model the adapter in " + dir.string() +
                         " was trained on (its weights differ); resume with that base, or start "
                         "a new run");
  load_checkpoint_weights(dir, model_, *optimizer_, adapter_ ? &*adapter_ : nullptr);
  state_ = saved;
  state_.world_size = world_size();
  state_.config = config_to_json(config_);  // with the changes a resume may make
  state_.config_hash = config_hash(state_.config);
  batcher_->set_position(state_.data_position);
  saved_step_ = state_.step;
  elapsed_before_ = state_.elapsed_s;
  if (scaler_ && state_.loss_scaler.is_object())
    scaler_->set_state({state_.loss_scaler.value("scale", config_.train.loss_scale_init),
                        state_.loss_scaler.value("growth_tracker", int64_t{0})});
  rerun_until_ = last_logged_step(fs::path(config_.run.output_dir) / "metrics.jsonl");
  // Last: nothing may draw random numbers between restoring the generators and the next step.
  restore_rng_state(state_);
  progress_->message(fmt::format(
      "resuming from {} at step {} (epoch {}, window {} of the data order)", dir.string(),
      state_.step, state_.data_position.epoch, state_.data_position.index));
  kill_here_if_testing("resume", state_.step);
}

void Trainer::prepare_run_directory() {
  if (!main_rank()) {  // rank 0 alone writes the run directory
    progress_ = std::make_unique<Progress>();
    return;
  }
  fs::path dir = config_.run.output_dir;
  std::string taken_over = resume_from_ ? "" : claim_run_directory(dir);
  fs::create_directories(dir);
  write_file_atomically(dir / "config.json", config_to_json(config_).dump(2) + "\n");
  metrics_ = std::make_unique<MetricsFile>(dir / "metrics.jsonl");
  progress_ = std::make_unique<Progress>(dir / "train.log");
  if (!taken_over.empty()) progress_->message(taken_over);
}

// Layer freezing, activation checkpointing, the chunked loss, the speed switches and the fp16 loss
// scaler: all fixed before the optimizer sees the parameters.
void Trainer::setup_memory_levers() {
  const TrainConfig& train = config_.train;
  if (std::string frozen = freeze_parameters(model_, train); !frozen.empty())
    progress_->message(frozen);
  if (config_.model.gradient_checkpointing) {
    model_->set_gradient_checkpointing(config_.model.checkpoint_every);
    progress_->message(
        fmt::format("gradient checkpointing: every {} block(s) recomputed in backward",
                    config_.model.checkpoint_every));
  }
  loss_chunk_tokens_ =
      resolve_loss_chunk_tokens(train, config_.data.seq_len, model_->spec().vocab_size, device_);
  if (loss_chunk_tokens_ > 0)
    progress_->message(fmt::format("chunked loss: {} tokens per chunk (train.chunked_loss: {})",
                                   loss_chunk_tokens_, enum_name(train.chunked_loss)));
  if (loss_chunk_tokens_ == 0 && model_->vocab_padding() > 1) {
    const int64_t V = model_->spec().vocab_size, multiple = model_->vocab_padding();
    const int64_t rows = (V + multiple - 1) / multiple * multiple;
    if (rows != V)
      progress_->message(fmt::format(
          "train.vocab_padding: the output head projects onto {} rows for the {} of the "
          "vocabulary (a multiple of {})",
          rows, V, multiple));
  }
  // The speed levers of issue 19's kind: opt-in until measured on a GPU. A CUDA kernel's lever
  // on the CPU runs its reference path.
  auto kernel_lever = [&](const char* key, const char* on_gpu) {
    progress_->message(
        device_.is_cuda()
            ? fmt::format("{}: {}", key, on_gpu)
            : fmt::format("{}: on; the CPU runs the same maths as plain operations", key));
  };
  model_->set_fused_kernels(train.fused_kernels);
  if (train.fused_kernels)
    kernel_lever("train.fused_kernels",
                 "residual add + norm and bias + GELU run as fused CUDA kernels");
  use_attention_backend(train.attention_backend);
  if (train.attention_backend == AttentionBackend::kMath)
    progress_->message("train.attention_backend: math: LibTorch's unfused attention only");
  else if (train.attention_backend != AttentionBackend::kAuto)
    progress_->message(
        fmt::format("train.attention_backend: {} tried first", enum_name(train.attention_backend)));
  if (train.fused_clipping)
    progress_->message("train.fused_clipping: clipping inside the fused AdamW kernel");
  if (train.fused_loss)
    kernel_lever("train.fused_loss", "the loss and its gradient in one CUDA kernel");
  if (train.precision == Precision::kFp16)
    scaler_ = std::make_unique<LossScaler>(train.loss_scale_init, train.loss_scale_growth_interval,
                                           train.loss_scale_backoff, device_);
  nonfinite_ = std::make_unique<NonFiniteStreak>(device_);
}

// Stops the run after max_nonfinite_steps consecutive steps with an inf/NaN loss. Those steps
// were skipped, so the weights and the last checkpoint are intact. On a GPU the count is read
// only at logging steps, as reading it synchronises.
void Trainer::check_nonfinite_streak() const {
  if (device_.is_cuda() && state_.step % config_.logging.every_steps != 0) return;
  const int64_t streak = nonfinite_->length();
  if (streak < config_.train.max_nonfinite_steps) return;
  throw Error(fmt::format(
      "step {}: the loss was inf or NaN for {} consecutive steps (steps {} to {}; "
      "train.max_nonfinite_steps: {}); those steps were skipped and the last checkpoint is "
      "intact. Lower train.lr, or train in fp32",
      state_.step, streak, state_.step - streak + 1, state_.step,
      config_.train.max_nonfinite_steps));
}

void Trainer::make_batcher(int64_t micro) {
  const auto seed = static_cast<uint64_t>(config_.run.seed);
  const DataConfig& data = config_.data;
  if (data.order != DataOrder::kCurriculum) {
    batcher_ = std::make_unique<Batcher>(data_->train, micro, seed, data.order);
    return;
  }
  Curriculum curriculum;
  curriculum.ranked = rank_easiest_first(curriculum_scores());
  curriculum.start_fraction = data.curriculum_start_fraction;
  curriculum.pace_steps =
      data.curriculum_pace_steps > 0 ? data.curriculum_pace_steps : total_steps_;
  curriculum.batches_per_step = config_.train.grad_accum_steps;
  batcher_ = std::make_unique<Batcher>(data_->train, micro, seed, data.order, curriculum);
  progress_->message(fmt::format(
      "data.order: curriculum: {} windows ranked by {}; the easiest {:.0f}% are available at step "
      "0, all of them from step {}",
      data_->train.num_windows(),
      data.curriculum_score == CurriculumScore::kLength ? "document length" : "the starting loss",
      100 * curriculum.start_fraction, curriculum.pace_steps));
}

std::vector<double> Trainer::curriculum_scores() const {
  if (config_.data.curriculum_score == CurriculumScore::kLoss) {
    std::vector<double> scores = curriculum_loss_scores(model_, *data_, device_);
    if (!group_) return scores;
    // Ranks could differ in the last bits of a loss and so in the ranking: rank 0's scores rule.
    auto shared = torch::tensor(scores, torch::TensorOptions().dtype(torch::kFloat64)).to(device_);
    group_->broadcast_from_main(shared, "agreeing on the curriculum's loss scores");
    auto host = shared.cpu();
    return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
  }
  auto eos = tokenizer_->eos_id();
  if (!eos)
    throw ConfigError(
        {"data.curriculum_score: length needs a tokenizer with an end-of-text "
         "token to tell documents apart; use curriculum_score: loss"});
  std::vector<int64_t> lengths = data_->train.window_document_lengths(*eos);
  return {lengths.begin(), lengths.end()};
}

TrainingStep::Result Trainer::train_step(double lr) {
  std::vector<Batch> batches;
  int64_t step_targets = 0;  // of the whole step, on every rank
  for (int64_t i = 0; i < config_.train.grad_accum_steps; ++i) {
    Batch global = batcher_->next();
    state_.tokens_seen += global.inputs.numel();
    step_targets += global.target_tokens;
    batches.push_back(group_ ? rank_share(global) : std::move(global));
  }
  TrainingStep::Result result;
  try {
    NanForTesting poison(*model_, batches.front(), state_.step + 1);
    result = training_step_->run(batches, lr, step_targets);
  } catch (const c10::OutOfMemoryError&) {
    throw out_of_memory_error(config_, device_, state_.step + 1);
  }
  nonfinite_->record(result.loss_nonfinite);
  return result;
}

void Trainer::setup_distillation() {
  teacher_ = build_teacher(config_, model_, device_);
  DistillSettings distill;
  distill.teacher = teacher_;
  distill.alpha = config_.distill.alpha;
  distill.options.temperature = config_.distill.temperature;
  distill.options.reverse = config_.distill.loss == DistillLoss::kReverseKl;
  // Always chunked: the plain loss would hold both models' full logits at once.
  distill.chunk_tokens =
      loss_chunk_tokens_ > 0 ? loss_chunk_tokens_ : config_.train.loss_chunk_tokens;
  training_step_->distill(std::move(distill));
  int64_t parameters = 0;
  for (const auto& p : teacher_->parameters()) parameters += p.numel();
  progress_->message(fmt::format(
      "distill: teacher {} ({} parameters, {} layers), loss = {:g} x CE + {:g} x {:g}^2 x {}",
      config_.distill.teacher, parameters, teacher_->spec().n_layer, 1 - config_.distill.alpha,
      config_.distill.alpha, config_.distill.temperature, enum_name(config_.distill.loss)));
}

void Trainer::log_step(int64_t step, const TrainingStep::Result& result, double lr) {
  // Reading the loss synchronises with the device: only done here, at logging intervals.
  const int64_t steps = step - state_.last_log_step;
  double loss = interval_loss_.item<double>() / static_cast<double>(std::max<int64_t>(steps, 1));
  double grad_norm = result.grad_norm.item<double>();
  double interval = seconds_since(last_log_time_);
  double tokens_per_sec =
      static_cast<double>(state_.tokens_seen - last_log_tokens_) / std::max(interval, 1e-9);
  double elapsed = elapsed_before_ + seconds_since(start_time_);
  double session_steps = static_cast<double>(std::max<int64_t>(step - first_step_, 1));
  double eta =
      seconds_since(start_time_) / session_steps * static_cast<double>(total_steps_ - step);
  nlohmann::json record = {{"step", step},
                           {"loss", loss},
                           {"lr", lr},
                           {"grad_norm", grad_norm},
                           {"tokens", state_.tokens_seen},
                           {"tokens_per_sec", tokens_per_sec},
                           {"elapsed_s", elapsed}};
  if (teacher_) {
    auto terms = (interval_terms_ / static_cast<double>(std::max<int64_t>(steps, 1)))
                     .to(torch::kFloat64)
                     .cpu();
    record["loss_ce"] = terms[0].item<double>();
    record["loss_kl"] = terms[1].item<double>();
    interval_terms_.zero_();
  }
  if (step <= rerun_until_) record["rerun"] = true;
  if (config_.data.order == DataOrder::kCurriculum)
    record["curriculum_windows"] = batcher_->available_windows();
  if (group_) {
    record["comm_wait_s"] = comm_wait_s_ / static_cast<double>(std::max<int64_t>(steps, 1));
    comm_wait_s_ = 0;
  }
  if (scaler_) record["loss_scale"] = log_loss_scale(*scaler_, *progress_, state_.last_log_step);
  write_record(record);
  progress_->step_line(
      fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}",
                  step, total_steps_, loss, lr, grad_norm, tokens_per_sec, format_duration(eta)));
  last_logged_loss_ = loss;
  last_log_time_ = Clock::now();
  last_log_tokens_ = state_.tokens_seen;
  state_.last_log_step = step;
  interval_loss_.zero_();
}

std::optional<EvalResult> Trainer::evaluate_and_log(int64_t step) {
  if (data_->validation.num_windows() == 0) return std::nullopt;
  EvalResult result = evaluate(
      model_, data_->validation, config_.train.micro_batch_size * world_size(),
      config_.eval.max_batches, config_.train.precision, device_, loss_chunk_tokens_, group_.get());
  const double peak_mb = peak_memory_mb(device_);
  nlohmann::json record = {{"step", step},
                           {"eval_loss", result.loss},
                           {"eval_perplexity", result.perplexity},
                           {"peak_memory_mb", peak_mb}};
  if (step <= rerun_until_) record["rerun"] = true;
  if (config_.data.order == DataOrder::kCurriculum)
    record["curriculum_windows"] = batcher_->available_windows();
  write_record(record);
  kill_here_if_testing("eval", step);
  progress_->message(fmt::format(
      "eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens), peak memory {:.0f} MB", step,
      result.loss, result.perplexity, result.tokens, peak_mb));
  log_samples(step);
  return result;
}

// Greedy continuations of eval.sample_prompts by the model as it is now, as TensorBoard text
// (samples/1, samples/2, ...). Greedy decoding in eval mode draws no random numbers: a resumed
// run stays exact.
void Trainer::log_samples(int64_t step) {
  const auto& prompts = config_.eval.sample_prompts;
  if (!tensorboard_ || prompts.empty()) return;
  GenerateOptions options;
  options.max_new_tokens = config_.eval.sample_new_tokens;
  options.temperature = 0;
  // generation_config.json sits in the model's directory (the tokenizer's when init: random).
  const fs::path model_dir =
      config_.model.path.empty() ? tokenizer_dir(config_) : fs::path(config_.model.path);
  options.stop_ids = end_of_sequence_ids(model_dir, model_->spec(), tokenizer_->eos_id());
  const bool was_training = model_->is_training();
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    // Framed, generated and decoded as lmtune generate does it.
    const std::vector<int64_t> ids = prompt_ids(*tokenizer_, prompts[i]);
    std::string continuation;
    if (!ids.empty() && static_cast<int64_t>(ids.size()) < model_->spec().context)
      continuation =
          continuation_text(*tokenizer_, generate(model_, ids, options), options.stop_ids);
    tensorboard_->text("samples/" + std::to_string(i + 1), step,
                       sample_markdown(prompts[i], continuation));
  }
  model_->train(was_training);
  tensorboard_->flush();
}

// A new event file per process, opening with a session START at the first step it trains. At a
// resume that START makes TensorBoard drop the points an earlier process wrote from that step on
// (a run killed after its last checkpoint), which this one trains and logs again. A fresh run
// writes one too: some of TensorBoard's readers take only a second START as a restart.
void Trainer::open_tensorboard() {
  if (!config_.logging.tensorboard || !main_rank()) return;
  tensorboard_ =
      std::make_unique<EventFileWriter>(fs::path(config_.run.output_dir) / "tensorboard");
  const int64_t first = state_.step + 1;
  tensorboard_->session_start(first);
  tensorboard_->text("config", first, markdown_code_block(config_to_json(config_).dump(2)));
  tensorboard_->flush();
}

void Trainer::write_record(const nlohmann::json& record) {
  if (!metrics_) return;  // not rank 0
  metrics_->write(record);
  if (!tensorboard_) return;
  const int64_t step = record.at("step").get<int64_t>();
  for (const auto& [key, tag] : kTensorBoardScalars)
    if (auto value = record.find(key); value != record.end())
      tensorboard_->scalar(tag, step, value->get<double>());
  tensorboard_->flush();
}

TrainSummary Trainer::train() {
  TrainSummary summary;
  open_tensorboard();
  start_time_ = last_log_time_ = last_save_time_ = Clock::now();
  first_step_ = state_.step;
  last_log_tokens_ = state_.tokens_seen;
  interval_loss_ = torch::full({}, state_.interval_loss,
                               torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  if (teacher_)
    interval_terms_ = torch::tensor(state_.interval_terms.value_or(std::vector<double>{0, 0}),
                                    torch::TensorOptions().dtype(torch::kFloat32))
                          .to(device_);
  if (state_.step == 0) {
    ExitOnSignal evaluating;  // still nothing to save
    summary.first_eval = evaluate_and_log(0);
  }
  StopSignals signals;

  bool stop_early = stopped_early_before();
  std::optional<EvalResult> eval;  // of the latest step, when it had one
  while (state_.step < total_steps_ && !stop_early) {
    double lr = learning_rate(config_.train, state_.step);
    TrainingStep::Result result = train_step(lr);
    if (const GradientSync* sync = training_step_->gradient_sync()) {
      comm_wait_s_ += sync->wait_seconds();
      if (state_.step == first_step_) log_overlap(*sync);
    }
    interval_loss_ += result.loss;
    if (teacher_) interval_terms_ += result.terms;
    ++state_.step;
    kill_here_if_testing("step", state_.step);
    check_nonfinite_streak();
    state_.lr = lr;
    const bool last = state_.step == total_steps_;
    if (state_.step % config_.logging.every_steps == 0 || last) log_step(state_.step, result, lr);

    eval.reset();
    const int64_t every = config_.eval.every_steps;
    if (every > 0 && state_.step % every == 0 && !last) {
      eval = evaluate_and_log(state_.step);
      if (eval && judge_ && judge_(state_.step, eval->loss)) {
        summary.pruned = true;
        summary.last_eval = eval;
        break;
      }
      stop_early = eval && patience_exhausted(*eval);
      if (stop_early && state_.step % config_.logging.every_steps != 0)
        log_step(state_.step, result, lr);
    }
    const auto [stop, save_due] = agree_on_stop(signals.received(), checkpoint_due(last));
    if (save_due || stop_early || stop) save_checkpoint_now(eval);
    if (stop)
      throw Interrupted(
          fmt::format("interrupted at step {}: checkpoint saved in {}; continue with "
                      "lmtune train CONFIG --resume",
                      state_.step, checkpoint_dir(config_.run.output_dir, state_.step).string()));
  }
  summary.stopped_early = stop_early;
  summary.steps = state_.step;
  summary.train_loss = last_logged_loss_;
  if (summary.pruned) {
    summary.seconds = elapsed_before_ + seconds_since(start_time_);
    summary.peak_memory_mb = peak_memory_mb(device_);
    progress_->message(
        fmt::format("pruned at step {}: the run stops here, without a final model", state_.step));
    return summary;
  }
  summary.last_eval = stop_early && eval ? eval : evaluate_and_log(state_.step);
  if (saved_step_ != state_.step) save_checkpoint_now(summary.last_eval);
  if (main_rank()) save_final();
  // The ranks end together: none reports success before rank 0 has written final/.
  if (group_) group_->barrier("the end of training");
  summary.seconds = elapsed_before_ + seconds_since(start_time_);
  summary.peak_memory_mb = peak_memory_mb(device_);
  if (config_.model.gradient_checkpointing)
    progress_->message(fmt::format("gradient checkpointing: {} block(s) recomputed in backward",
                                   activation_recomputations()));
  progress_->message(fmt::format("done: {} steps in {}, final model in {}", state_.step,
                                 format_duration(summary.seconds),
                                 (fs::path(config_.run.output_dir) / "final").string()));
  return summary;
}

// A resumed run whose checkpoint is that of an early stop (the run was killed while it finished)
// finishes without training further, as the uninterrupted run did; unless the resume raised
// eval.patience.
bool Trainer::stopped_early_before() {
  const int64_t patience = config_.eval.patience;
  if (patience == 0 || state_.evals_without_improvement < patience) return false;
  progress_->message(
      fmt::format("resume: the run stopped early at step {} (no improvement in {} evaluations, "
                  "eval.patience: {}); finishing it",
                  state_.step, state_.evals_without_improvement, patience));
  return true;
}

bool Trainer::patience_exhausted(const EvalResult& eval) {
  if (!state_.best_eval_loss || eval.loss < *state_.best_eval_loss) {
    state_.best_eval_loss = eval.loss;
    state_.evals_without_improvement = 0;
    return false;
  }
  if (config_.eval.patience == 0 || ++state_.evals_without_improvement < config_.eval.patience)
    return false;
  progress_->message(fmt::format("early stop at step {}: no improvement in {} evaluations",
                                 state_.step, config_.eval.patience));
  return true;
}

bool Trainer::checkpoint_due(bool last_step) const {
  if (last_step) return false;  // the end of training saves after its final evaluation
  const auto& c = config_.checkpoint;
  if (c.every_steps > 0 && state_.step % c.every_steps == 0) return true;
  return c.every_minutes > 0 && seconds_since(last_save_time_) >= 60.0 * c.every_minutes;
}

void Trainer::save_checkpoint_now(const std::optional<EvalResult>& eval) {
  if (!main_rank()) {  // rank 0 saves; the weights and optimizer state are the same on every rank
    saved_step_ = state_.step;
    last_save_time_ = Clock::now();
    return;
  }
  // The counters are kept in state_ as training goes; these are read off the live objects.
  state_.data_position = batcher_->position();
  state_.eval_loss = eval ? std::optional<double>(eval->loss) : std::nullopt;
  state_.interval_loss = interval_loss_.item<double>();
  if (teacher_) {
    auto terms = interval_terms_.to(torch::kFloat64).cpu();
    state_.interval_terms = std::vector<double>{terms[0].item<double>(), terms[1].item<double>()};
  }
  state_.elapsed_s = elapsed_before_ + seconds_since(start_time_);
  if (scaler_) {
    LossScalerState scaler = scaler_->state();
    state_.loss_scaler = {{"scale", scaler.scale}, {"growth_tracker", scaler.growth_tracker}};
  }
  capture_rng_state(state_);
  fs::path dir = save_checkpoint(config_.run.output_dir, model_, *tokenizer_, *optimizer_, state_,
                                 adapter_ ? &*adapter_ : nullptr);
  release_cpu_copies();
  saved_step_ = state_.step;
  last_save_time_ = Clock::now();
  apply_retention(config_.run.output_dir, config_.checkpoint.keep_last);
  progress_->message("saved checkpoint " + dir.string());
}

void Trainer::save_final() {
  fs::path final_dir = fs::path(config_.run.output_dir) / "final";
  fs::path tmp = final_dir;
  tmp += ".tmp";
  remove_tree(tmp);
  if (adapter_) {
    save_adapter(*model_, adapter_->spec, adapter_->summary, tmp, adapter_->base_model,
                 tokenizer_.get());
    if (config_.lora.save_merged) {
      // Merged from the base as stored (not as quantized in memory), as PEFT users merge.
      write_merged_model(config_.model.path, tmp, tmp / "merged", tokenizer_.get());
      progress_->message("merged model (base + adapter) in final/merged");
    }
  } else {
    save_hf_model(*model_, tmp, tokenizer_.get());
  }
  // A resumed run that trains past an earlier end replaces that run's final/.
  fs::path previous = final_dir;
  previous += ".previous";
  remove_tree(previous);
  if (fs::exists(final_dir)) fs::rename(final_dir, previous);
  fs::rename(tmp, final_dir);
  sync_directory(config_.run.output_dir);  // makes the renames durable
  remove_tree(previous);
}

}  // namespace lmtune
