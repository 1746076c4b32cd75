#include "lmtune/train/bench.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/host_allocator.h"
#include "lmtune/core/runtime.h"
#include "lmtune/core/schema.h"
#include "lmtune/data/dataset.h"
#include "lmtune/model/attention.h"
#include "lmtune/model/bf16_emulation.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/llama.h"
#include "lmtune/model/lora.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/memory.h"
#include "lmtune/train/optim.h"
#include "lmtune/train/precision.h"
#include "lmtune/train/setup.h"
#include "lmtune/train/training_step.h"

namespace lmtune {
namespace {

using Clock = std::chrono::steady_clock;

// Waits for queued device work, so a clock read after it covers that work.
void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs `step` `steps` times under LibTorch's Kineto profiler and saves the Chrome trace (what
// chrome://tracing, Perfetto and TensorBoard open) as dir/trace.json.
void profile(const std::function<void()>& step, int64_t steps, torch::Device device,
             const std::filesystem::path& dir) {
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  std::set<ActivityType> activities = {ActivityType::CPU};
  if (device.is_cuda()) activities.insert(ActivityType::CUDA);
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO,
                                                     /*report_input_shapes=*/true);
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  for (int64_t i = 0; i < steps; ++i) step();
  synchronize(device);
  const auto trace = dir / "trace.json";
  profiler::disableProfiler()->save(trace.string());
  if (!std::filesystem::is_regular_file(trace))
    throw Error("--profile: the profiler wrote no trace at " + trace.string());
}

// A random model of the benchmark's shape, without dropout (none of the peers have it).
CausalLM bench_model(const BenchOptions& o) {
  const int64_t mlp_width = o.mlp_width > 0 ? o.mlp_width : 4 * o.n_embd;
  if (o.arch == "llama") {
    LlamaConfig c;
    c.vocab_size = o.vocab;
    c.hidden_size = o.n_embd;
    c.intermediate_size = mlp_width;
    c.num_hidden_layers = o.n_layer;
    c.num_attention_heads = o.n_head;
    c.num_key_value_heads = o.n_kv_head > 0 ? o.n_kv_head : o.n_head;
    c.head_dim = o.n_embd / o.n_head;
    c.max_position_embeddings = o.seq;
    return Llama(c);
  }
  GPT2Config config;
  config.n_layer = o.n_layer;
  config.n_head = o.n_head;
  config.n_embd = o.n_embd;
  config.n_inner = mlp_width;
  config.vocab_size = o.vocab;
  config.n_positions = o.seq;
  config.embd_pdrop = config.attn_pdrop = config.resid_pdrop = 0.0;
  return GPT2(config);
}

// Uniformly random token ids, inputs and targets (B, T), in pinned memory on a GPU run so the
// copies summed_token_loss makes are asynchronous.
Batch synthetic_batch(const BenchOptions& o, torch::Device device) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/0);
  auto ids = [&] {
    auto t = torch::randint(o.vocab, {o.batch, o.seq}, generator, torch::kLong);
    return device.is_cuda() ? t.pin_memory() : t;
  };
  Batch batch;
  batch.inputs = ids();
  batch.targets = ids();
  batch.target_tokens = o.batch * o.seq;
  return batch;
}

struct MatmulPeak {
  double libtorch = 0;  // LibTorch's own kernel for the dtype
  double best = 0;      // the better of it and the path the model takes
  bool operator<(const MatmulPeak& other) const { return best < other.best; }
};

MatmulPeak measure_matmul_peak(Precision precision, torch::Device device) {
  if (device.is_cuda()) {
    // A GPU needs a large product to reach its peak: 8192^3 x 2 = 1.1 TFLOP, about 1.4 ms on
    // an H100 in bf16. Autocast adds nothing to a product that is already in the dtype.
    const double tflops = matmul_tflops(precision, device, 8192, /*seconds=*/0.3,
                                        /*through_autocast=*/false);
    return {tflops, tflops};
  }
  // 1024^3 x 2 = 2.1 GFLOP per matmul: ~60 ms at CPU fp32 speeds. LibTorch's own bf16 kernel
  // is ~5x slower on a CPU without bf16 hardware, so it gets a 512^3 matmul.
  const bool emulated = precision != Precision::kFp32 && device.is_cpu() &&
                        cpu_bf16_kernels() == CpuBf16Kernels::kEmulated;
  MatmulPeak peak;
  peak.libtorch = matmul_tflops(precision, device, emulated ? 512 : 1024, /*seconds=*/0.5,
                                /*through_autocast=*/false);
  peak.best = std::max(peak.libtorch, matmul_tflops(precision, device, 1024, /*seconds=*/0.5,
                                                    precision != Precision::kFp32));
  return peak;
}

}  // namespace

double training_flops_per_token(const CausalLMImpl& model, int64_t seq) {
  const ModelSpec& spec = model.spec();
  // Embedding lookups cost no FLOPs: position embeddings never count, token embeddings only as
  // the output projection they double as when tied.
  const auto embeddings = model.embedding_parameters();
  double flops = 0;
  for (const auto& p : model.parameters()) {
    if (p.is_same(embeddings.front()) && !spec.tie_word_embeddings) continue;  // a lookup
    if (embeddings.size() > 1 && p.is_same(embeddings.back())) continue;       // positions
    flops += (p.requires_grad() ? 6.0 : 4.0) * static_cast<double>(p.numel());
  }
  for (const auto& module : model.modules()) {  // a quantized weight is no parameter, and frozen
    auto projection = std::dynamic_pointer_cast<ProjectionImpl>(module);
    if (projection && projection->is_quantized())
      flops += 4.0 * static_cast<double>(projection->in_features() * projection->out_features());
  }
  const double attention = 12.0 * static_cast<double>(spec.n_layer * spec.n_head * spec.head_dim) *
                           static_cast<double>(seq);
  return flops + attention;
}

double matmul_tflops(Precision precision, torch::Device device, int64_t n, double seconds,
                     bool through_autocast) {
  torch::NoGradGuard no_grad;
  auto dtype = precision == Precision::kBf16   ? torch::kBFloat16
               : precision == Precision::kFp16 ? torch::kHalf
                                               : torch::kFloat32;
  auto options = torch::TensorOptions().dtype(dtype).device(device);
  auto a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  std::optional<AutocastScope> autocast;
  if (through_autocast) autocast.emplace(precision, device);
  auto matmul = [&] { return through_autocast ? autocast_linear(a, b) : torch::linear(a, b); };
  matmul();
  synchronize(device);
  double best = 1e30;
  auto start = Clock::now();
  do {
    auto t0 = Clock::now();
    matmul();
    synchronize(device);
    best = std::min(best, seconds_since(t0));
  } while (seconds_since(start) < seconds);
  return 2.0 * static_cast<double>(n * n * n) / best / 1e12;
}

BenchResult run_bench(const BenchOptions& o) {
  BenchResult result;
  result.threads = set_threads(o.threads);
  torch::Device device = resolve_device(o.device);
  result.device = device.str();
  torch::manual_seed(0);
  if (!o.profile_dir.empty()) {  // before minutes of setup and timing, not after
    std::error_code error;
    std::filesystem::create_directories(o.profile_dir, error);
    if (error) throw Error("--profile: cannot create " + o.profile_dir + ": " + error.message());
  }

  CausalLM model = bench_model(o);
  if (o.quantize != Quantize::kNone) {
    quantize_base(*model, quant_type(o.quantize), /*double_quant=*/false);
    trim_host_cache();  // as the trainer does: the fp32 weights' memory goes back
  }
  if (o.lora_r > 0) {
    LoraSpec lora;
    lora.r = o.lora_r;
    lora.alpha = 2.0 * static_cast<double>(o.lora_r);
    lora.dropout = 0;
    lora.target_modules = {"all-linear"};
    attach_lora(*model, lora);
  }
  model->set_vocab_padding(resolve_vocab_padding(o.vocab_padding, device));
  model->set_fused_kernels(o.fused_kernels);
  use_attention_backend(o.attention_backend);
  model->to(device);
  model->train();
  AdamW optimizer(decay_groups(*model, /*weight_decay=*/0.1), AdamWOptions{});
  TrainConfig train;  // the defaults: which loss the trainer picks for this shape
  train.micro_batch_size = o.batch;
  train.chunked_loss = o.chunked_loss;
  train.loss_chunk_tokens = o.loss_chunk_tokens;
  // The trainer's step with its default settings (one micro-batch, clip at 1.0, AdamW at a
  // constant lr).
  TrainingStep step(
      model, optimizer,
      StepSettings{o.precision, device, resolve_loss_chunk_tokens(train, o.seq, o.vocab, device),
                   /*max_grad_norm=*/1.0, o.fused_clipping, o.fused_loss});
  const std::vector<Batch> batch = {synthetic_batch(o, device)};
  for (const auto& p : step.parameters()) result.parameters += p.numel();  // trainable
  auto run_step = [&] { return step.run(batch, /*lr=*/3e-4).loss; };

  const MatmulPeak before = measure_matmul_peak(o.precision, device);
  reset_peak_memory(device);
  for (int64_t i = 0; i < o.warmup; ++i) run_step();
  synchronize(device);
  const HostCacheStats cache_before = host_cache_stats();
  torch::Tensor loss;
  auto start = Clock::now();
  for (int64_t i = 0; i < o.steps; ++i) loss = run_step();
  result.final_loss = loss.item<double>();  // the one host synchronisation of the timed loop
  const double seconds = seconds_since(start);
  const HostCacheStats cache_after = host_cache_stats();

  result.loss_chunk_tokens = step.settings().loss_chunk_tokens;
  result.vocab_padding = model->vocab_padding();
  result.peak_memory_mb = peak_memory_mb(device);  // of the steps: reset after the setup
  result.host_cache = host_cache_installed();
  const int64_t hits = cache_after.hits - cache_before.hits;
  const int64_t large = hits + cache_after.misses - cache_before.misses;
  result.host_cache_hit_rate = large > 0 ? static_cast<double>(hits) / large : 0.0;
  result.step_ms = 1000.0 * seconds / static_cast<double>(o.steps);
  result.tokens_per_sec = static_cast<double>(o.batch * o.seq * o.steps) / seconds;
  result.flops_per_token = training_flops_per_token(*model, o.seq);
  result.achieved_tflops = result.flops_per_token * result.tokens_per_sec / 1e12;
  // Timed before and after the steps, best of both, so a moment of load on a shared machine does
  // not pass for the peak.
  const MatmulPeak peak = std::max(before, measure_matmul_peak(o.precision, device));
  result.libtorch_matmul_tflops = peak.libtorch;
  result.peak_tflops = peak.best;
  result.mfu = result.achieved_tflops / result.peak_tflops;
  if (!o.profile_dir.empty())  // after the timing, which the profiler would slow
    profile([&] { run_step(); }, o.profile_steps, device, o.profile_dir);
  return result;
}

nlohmann::json bench_json(const BenchOptions& o, const BenchResult& r) {
  return {{"impl", "lmtune"},
          {"torch", TORCH_VERSION},
          {"device", r.device},
          {"threads", r.threads},
          {"precision", enum_name(o.precision)},
          {"arch", o.arch},
          {"n_layer", o.n_layer},
          {"n_head", o.n_head},
          {"n_embd", o.n_embd},
          {"n_kv_head", o.n_kv_head > 0 ? o.n_kv_head : o.n_head},
          {"mlp_width", o.mlp_width > 0 ? o.mlp_width : 4 * o.n_embd},
          {"vocab", o.vocab},
          {"batch", o.batch},
          {"seq", o.seq},
          {"steps", o.steps},
          {"warmup", o.warmup},
          {"parameters", r.parameters},
          {"loss_chunk_tokens", r.loss_chunk_tokens},
          {"vocab_padding", r.vocab_padding},
          {"fused_kernels", o.fused_kernels},
          {"fused_clipping", o.fused_clipping},
          {"fused_loss", o.fused_loss},
          {"attention_backend", enum_name(o.attention_backend)},
          {"lora_r", o.lora_r},
          {"quantize", enum_name(o.quantize)},
          {"step_ms", r.step_ms},
          {"tokens_per_sec", r.tokens_per_sec},
          {"flops_per_token", r.flops_per_token},
          {"achieved_tflops", r.achieved_tflops},
          {"peak_tflops", r.peak_tflops},
          {"libtorch_matmul_tflops", r.libtorch_matmul_tflops},
          {"mfu", r.mfu},
          {"peak_memory_mb", r.peak_memory_mb},
          {"host_cache", r.host_cache},
          {"host_cache_hit_rate", r.host_cache_hit_rate},
          {"final_loss", r.final_loss}};
}

}  // namespace lmtune
