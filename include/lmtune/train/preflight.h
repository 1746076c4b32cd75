// Checks a config against the files and the machine before anything is loaded or created, so a
// typo costs one line instead of minutes of loading. Reads only the model's config.json and the
// other files' existence; never writes.
#pragma once

#include "lmtune/core/config.h"

namespace lmtune {

// What `prepare` reads: the tokenizer files and the data files exist. Throws InputError (exit 3).
void check_data_inputs(const Config& config);

// Everything `train` and `eval` read: check_data_inputs, and the files the config names exist
// (model directory with config.json and weights, tokenizer files, data), the model's config.json
// agrees with the config (train.freeze_layers), the machine can run it (fp16 and run.device: cuda
// need a GPU; `cuda_available` says whether one is visible), and run.output_dir is not a file.
// Throws InputError for the first missing or unreadable file (exit 3), else ConfigError listing
// every rule broken (exit 2).
void check_inputs(const Config& config, bool cuda_available);

}  // namespace lmtune
