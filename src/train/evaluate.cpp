#include "lmtune/train/evaluate.h"

#include <cmath>
#include <numeric>

#include <ATen/DeviceAccelerator.h>

#include "lmtune/model/chunked_loss.h"
#include "lmtune/train/precision.h"

namespace lmtune {
namespace {

// `host` on `device`. A copy to a GPU goes through pinned memory so it is asynchronous: the host
// carries on queueing the step while the tokens travel.
torch::Tensor to_device(const torch::Tensor& host, torch::Device device) {
  if (!device.is_cuda() || !host.device().is_cpu()) return host.to(device);
  return (host.is_pinned() ? host : host.pin_memory()).to(device, /*non_blocking=*/true);
}

}  // namespace

torch::Tensor summed_token_loss(const CausalLM& model, const Batch& batch, Precision precision,
                                torch::Device device, int64_t loss_chunk_tokens, bool fused_loss) {
  auto inputs = to_device(batch.inputs, device);    // (B, T)
  auto targets = to_device(batch.targets, device);  // (B, T)
  fused_loss = fused_loss && torch::GradMode::is_enabled();
  torch::Tensor logits;
  {
    AutocastScope autocast(precision, device);
    if (loss_chunk_tokens > 0 || fused_loss) {
      auto hidden = model->hidden_states(inputs);  // (B, T, C)
      ChunkedLossOptions options;
      options.chunk_tokens = loss_chunk_tokens > 0 ? loss_chunk_tokens : targets.numel();
      if (fused_loss) options.vocab_padding = model->vocab_padding();
      options.fused_kernel = fused_loss;
      return chunked_lm_loss_sum(hidden.reshape({-1, hidden.size(-1)}), model->output_weight(),
                                 targets.reshape({-1}), options);
    }
    logits = model->forward(inputs);  // (B, T, V)
  }
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

torch::Tensor summed_distill_terms(const CausalLM& student, const CausalLM& teacher,
                                   const Batch& batch, Precision precision, torch::Device device,
                                   int64_t chunk_tokens, DistillTermsOptions options) {
  auto inputs = to_device(batch.inputs, device);    // (B, T)
  auto targets = to_device(batch.targets, device);  // (B, T)
  AutocastScope autocast(precision, device);
  torch::Tensor teacher_hidden;
  {
    torch::NoGradGuard frozen;
    teacher_hidden = teacher->hidden_states(inputs);  // (B, T, C')
  }
  auto hidden = student->hidden_states(inputs);  // (B, T, C)
  return chunked_distill_terms(hidden.reshape({-1, hidden.size(-1)}), student->output_weight(),
                               teacher_hidden.reshape({-1, teacher_hidden.size(-1)}),
                               teacher->output_weight(), targets.reshape({-1}), options,
                               chunk_tokens);
}

int64_t chunked_loss_auto_bytes(torch::Device device) {
  if (!device.is_cuda()) return kChunkedLossAutoBytes;
  const std::size_t total_bytes =
      at::accelerator::getMemoryInfo(device.has_index() ? device.index() : 0).second;
  return static_cast<int64_t>(total_bytes / 8);
}

int64_t resolve_loss_chunk_tokens(const TrainConfig& train, int64_t seq_len, int64_t vocab_size,
                                  torch::Device device) {
  if (train.chunked_loss == ChunkedLoss::kOff) return 0;
  const int64_t logits_bytes = train.micro_batch_size * seq_len * vocab_size * 4;  // fp32
  if (train.chunked_loss == ChunkedLoss::kAuto && logits_bytes <= chunked_loss_auto_bytes(device))
    return 0;
  return train.loss_chunk_tokens;
}

int64_t resolve_vocab_padding(int64_t setting, torch::Device device) {
  if (setting != kAutoVocabPadding) return setting;
  return device.is_cuda() ? kGpuVocabPadding : 0;
}

std::vector<double> window_losses(const CausalLM& model, const TokenSplit& split,
                                  torch::Device device) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  std::vector<double> losses(static_cast<std::size_t>(split.num_windows()), 0.0);
  for (int64_t w = 0; w < split.num_windows(); ++w) {
    Batch batch = split.batch({w});
    if (batch.target_tokens == 0) continue;
    const double sum = summed_token_loss(model, batch, Precision::kFp32, device).item<double>();
    losses[w] = sum / static_cast<double>(batch.target_tokens);
  }
  model->train(was_training);
  return losses;
}

EvalResult evaluate(const CausalLM& model, const TokenSplit& split, int64_t batch_size,
                    int64_t max_batches, Precision precision, torch::Device device,
                    int64_t loss_chunk_tokens, Distributed* group) {
  torch::NoGradGuard no_grad;
  bool was_training = model->is_training();
  model->eval();
  const int64_t rank = group ? group->rank() : 0, ranks = group ? group->world_size() : 1;
  // (summed loss, target tokens), in fp64 so that the sum over batches and ranks stays exact.
  auto sums = torch::zeros({2}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  int64_t batches = 0;
  for (int64_t start = 0; start < split.num_windows(); start += batch_size, ++batches) {
    if (max_batches > 0 && batches == max_batches) break;
    // This rank's share of the batch's windows [start, start + n).
    const int64_t n = std::min(batch_size, split.num_windows() - start);
    const int64_t first = start + n * rank / ranks, end = start + n * (rank + 1) / ranks;
    if (first == end) continue;
    std::vector<int64_t> windows(end - first);
    std::iota(windows.begin(), windows.end(), first);
    Batch batch = split.batch(windows);
    sums[0] +=
        summed_token_loss(model, batch, precision, device, loss_chunk_tokens).to(torch::kFloat64);
    sums[1] += static_cast<double>(batch.target_tokens);
  }
  if (group) group->all_reduce_sum(sums, "the evaluation all-reduce");
  model->train(was_training);
  auto host = sums.cpu();
  EvalResult result;
  result.tokens = static_cast<int64_t>(host[1].item<double>());
  result.loss = result.tokens > 0 ? host[0].item<double>() / host[1].item<double>() : 0.0;
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace lmtune
