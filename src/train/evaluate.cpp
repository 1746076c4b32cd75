#include "lmtune/train/evaluate.h"

#include <cmath>
#include <numeric>

#include "lmtune/train/precision.h"

namespace lmtune {

torch::Tensor summed_token_loss(GPT2& model, const Batch& batch, Precision precision,
                                torch::Device device) {
  auto inputs = batch.inputs.to(device, /*non_blocking=*/true);    // (B, T)
  auto targets = batch.targets.to(device, /*non_blocking=*/true);  // (B, T)
  torch::Tensor logits;
  {
    AutocastScope autocast(precision, device);
    logits = model->forward(inputs);  // (B, T, V)
  }
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

EvalResult evaluate(GPT2& model, const TokenSplit& split, int64_t batch_size, int64_t max_batches,
                    Precision precision, torch::Device device) {
  torch::NoGradGuard no_grad;
  bool was_training = model->is_training();
  model->eval();
  auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  int64_t tokens = 0, batches = 0;
  for (int64_t start = 0; start < split.num_windows(); start += batch_size) {
    if (max_batches > 0 && batches == max_batches) break;
    std::vector<int64_t> windows(std::min(batch_size, split.num_windows() - start));
    std::iota(windows.begin(), windows.end(), start);
    Batch batch = split.batch(windows);
    total += summed_token_loss(model, batch, precision, device).to(torch::kFloat64);
    tokens += batch.target_tokens;
    ++batches;
  }
  model->train(was_training);
  EvalResult result;
  result.tokens = tokens;
  result.loss = tokens > 0 ? total.item<double>() / static_cast<double>(tokens) : 0.0;
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace lmtune
