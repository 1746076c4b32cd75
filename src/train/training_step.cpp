#include "lmtune/train/training_step.h"

#include "lmtune/train/evaluate.h"

namespace lmtune {
namespace {

// Gradients of one all-reduce; 25 MB, as PyTorch's DDP buckets them: large enough to use the
// link's bandwidth, small enough that the first starts while backward has most layers left.
constexpr int64_t kBucketBytes = 25 << 20;

}  // namespace

TrainingStep::TrainingStep(CausalLM model, AdamW& optimizer, StepSettings settings,
                           LossScaler* scaler)
    : model_(std::move(model)), optimizer_(optimizer), settings_(settings), scaler_(scaler) {
  for (const auto& group : optimizer_.groups())
    params_.insert(params_.end(), group.params.begin(), group.params.end());
}

void TrainingStep::distribute(Distributed& group) {
  group_ = &group;
  sync_ = std::make_unique<GradientSync>(group, params_, kBucketBytes);
}

TrainingStep::Result TrainingStep::run(const std::vector<Batch>& micro_batches, double lr,
                                       std::optional<int64_t> step_targets) {
  // Loss is averaged over the target tokens of all micro-batches of the step, so accumulating
  // 4 x 2 sequences gives the same gradient as one batch of 8 (and 2 ranks x 4 as 1 x 8).
  int64_t targets = 0;
  for (const auto& batch : micro_batches) targets += batch.target_tokens;
  if (step_targets) targets = *step_targets;
  const auto& s = settings_;
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32).device(s.device);
  auto step_loss = torch::zeros({}, fp32);
  auto step_terms = distill_ ? torch::zeros({2}, fp32) : torch::Tensor();  // (CE, KL)
  const double norm = static_cast<double>(std::max<int64_t>(targets, 1));
  for (std::size_t i = 0; i < micro_batches.size(); ++i) {
    if (sync_) sync_->set_enabled(i + 1 == micro_batches.size());
    torch::Tensor loss;
    if (distill_) {
      auto terms = distillation_terms(micro_batches[i]) / norm;  // (2)
      loss = distill_loss(terms);
      step_terms += terms.detach();
    } else {
      loss = summed_token_loss(model_, micro_batches[i], s.precision, s.device, s.loss_chunk_tokens,
                               s.fused_loss) /
             norm;
    }
    (scaler_ ? scaler_->scale(loss) : loss).backward();
    step_loss += loss.detach();
  }
  if (sync_) {
    sync_->finish();
    group_->all_reduce_sum(step_loss, "the loss all-reduce");
    if (distill_) group_->all_reduce_sum(step_terms, "the distillation terms all-reduce");
  }
  // A step whose gradients or loss are inf/NaN is skipped on the device (found_inf = 1); clipping
  // sees unscaled gradients.
  auto found_inf = torch::zeros({}, step_loss.options());
  torch::Tensor norm_before_clipping, grad_divisor;
  if (s.fused_clipping) {
    // An inf or NaN gradient makes the norm non-finite, which found_inf below catches: the
    // scaler's own pass is not needed.
    norm_before_clipping = grad_norm(params_);
    if (scaler_) norm_before_clipping = norm_before_clipping / scaler_->current_scale();
    if (s.max_grad_norm > 0)
      grad_divisor = clip_coefficient(norm_before_clipping, s.max_grad_norm).reciprocal();
    if (scaler_)
      grad_divisor = grad_divisor.defined() ? grad_divisor * scaler_->current_scale()
                                            : scaler_->current_scale();
  } else {
    if (scaler_) scaler_->unscale(params_, found_inf);
    norm_before_clipping = clip_grad_norm(params_, s.max_grad_norm);
  }
  auto loss_nonfinite = not_finite(step_loss);
  found_inf =
      torch::maximum(found_inf, torch::maximum(loss_nonfinite, not_finite(norm_before_clipping)));
  optimizer_.step(lr, found_inf, grad_divisor);
  optimizer_.zero_grad();
  if (scaler_) scaler_->update(found_inf);
  return {step_loss, norm_before_clipping, loss_nonfinite, step_terms};
}

torch::Tensor TrainingStep::distillation_terms(const Batch& batch) const {
  const auto& s = settings_;
  return summed_distill_terms(model_, distill_->teacher, batch, s.precision, s.device,
                              distill_->chunk_tokens, distill_->options);
}

torch::Tensor TrainingStep::distill_loss(const torch::Tensor& terms) const {
  const double t = distill_->options.temperature;
  // Hinton et al.'s T^2 keeps the soft term's gradients on the scale of the hard term's.
  return (1 - distill_->alpha) * terms[0] + distill_->alpha * t * t * terms[1];
}

}  // namespace lmtune
