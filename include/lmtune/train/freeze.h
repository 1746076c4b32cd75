// Layer freezing: train.freeze_embeddings and train.freeze_layers turn off the gradients of the
// parameters they name, so those get no gradient and no optimizer state.
#pragma once

#include <string>

#include "lmtune/core/config.h"
#include "lmtune/model/gpt2.h"

namespace lmtune {

// Sets requires_grad false on wte and wpe (freeze_embeddings) and on blocks 0..freeze_layers-1.
// Returns a line saying what was frozen, empty when nothing was. ConfigError naming
// train.freeze_layers when it exceeds the model's layers.
std::string freeze_parameters(GPT2& model, const TrainConfig& train);

}  // namespace lmtune
