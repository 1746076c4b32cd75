#include "lmtune/train/freeze.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lmtune/core/errors.h"

namespace lmtune {
namespace {

int64_t freeze(torch::nn::Module& module) {
  int64_t count = 0;
  for (auto& p : module.parameters()) {
    p.requires_grad_(false);
    count += p.numel();
  }
  return count;
}

}  // namespace

std::string freeze_parameters(GPT2& model, const TrainConfig& train) {
  const int64_t n_layer = model->config().n_layer;
  if (train.freeze_layers > n_layer)
    throw ConfigError({fmt::format("train.freeze_layers: {} is more than the model's {} layers",
                                   train.freeze_layers, n_layer)});
  std::vector<std::string> parts;
  int64_t frozen = 0;
  if (train.freeze_embeddings) {
    frozen += freeze(*model->wte) + freeze(*model->wpe);
    parts.push_back(model->config().tie_word_embeddings
                        ? "embeddings (wte, wpe; lm_head is tied to wte, so it is frozen too)"
                        : "embeddings (wte, wpe)");
  }
  if (train.freeze_layers > 0) {
    for (int64_t i = 0; i < train.freeze_layers; ++i) frozen += freeze(*model->h[i]);
    parts.push_back(
        fmt::format("blocks 0-{} (h.0 to h.{})", train.freeze_layers - 1, train.freeze_layers - 1));
  }
  if (parts.empty()) return "";
  return fmt::format("frozen: {} ({} parameters)", fmt::join(parts, ", "), frozen);
}

}  // namespace lmtune
