#include "lmtune/train/freeze.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

int64_t freeze(std::vector<torch::Tensor> parameters) {
  int64_t count = 0;
  for (auto& p : parameters) {
    p.requires_grad_(false);
    count += p.numel();
  }
  return count;
}

}  // namespace

std::string freeze_parameters(const CausalLM& model, const TrainConfig& train) {
  const int64_t n_layer = model->spec().n_layer;
  if (train.freeze_layers > n_layer)
    throw ConfigError({fmt::format("train.freeze_layers: {} is more than the model's {} layers",
                                   train.freeze_layers, n_layer)});
  std::vector<std::string> parts;
  int64_t frozen = 0;
  if (train.freeze_embeddings) {
    frozen += freeze(model->embedding_parameters());
    parts.push_back(model->embedding_names());
  }
  if (train.freeze_layers > 0) {
    for (int64_t i = 0; i < train.freeze_layers; ++i)
      frozen += freeze(model->block(i)->parameters());
    parts.push_back(fmt::format("blocks 0-{} ({}.0 to {}.{})", train.freeze_layers - 1,
                                model->blocks_name(), model->blocks_name(),
                                train.freeze_layers - 1));
  }
  if (parts.empty()) return "";
  return fmt::format("frozen: {} ({} parameters)", fmt::join(parts, ", "), frozen);
}

}  // namespace lmtune
