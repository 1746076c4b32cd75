// Layer freezing: train.freeze_embeddings and train.freeze_layers turn off the gradients of the
// parameters they name, so those get no gradient and no optimizer state.
#pragma once

#include <string>

#include "lmtune/core/config.h"
#include "lmtune/model/causal_lm.h"

namespace lmtune {

// Sets requires_grad false on the embeddings (freeze_embeddings: wte and wpe for GPT-2) and on
// blocks 0..freeze_layers-1. Returns a line saying what was frozen, empty when nothing was.
// ConfigError naming train.freeze_layers when it exceeds the model's layers.
std::string freeze_parameters(const CausalLM& model, const TrainConfig& train);

}  // namespace lmtune
