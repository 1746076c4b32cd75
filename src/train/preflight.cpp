#include "lmtune/train/preflight.h"

#include "lmtune/core/errors.h"
#include "lmtune/data/reader.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/train/setup.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

// The model's layer count, from its config.json (pretrained) or the shape keys (random).
int64_t check_model_files(const Config& config) {
  if (config.model.init == ModelInit::kRandom) return config.model.n_layer;
  const ModelSpec spec = read_model_spec(config.model.path);
  const fs::path dir = config.model.path;
  if (!fs::exists(dir / "model.safetensors") && !fs::exists(dir / "model.safetensors.index.json"))
    throw InputError((dir / "model.safetensors").string(),
                     "missing: the model's weights (model.path; or set model.init: random to "
                     "train from scratch)");
  if (config.lora.enabled && !config.lora.adapter.empty()) {
    const fs::path adapter = config.lora.adapter;
    read_adapter_config(adapter);
    if (!fs::exists(adapter / kAdapterWeightsFile))
      throw InputError((adapter / kAdapterWeightsFile).string(),
                       "missing: the adapter's weights (lora.adapter)");
  }
  return spec.n_layer;
}

std::vector<std::string> broken_rules(const Config& config, int64_t n_layer, bool cuda_available) {
  std::vector<std::string> problems;
  const fs::path output_dir = config.run.output_dir;
  if (fs::exists(output_dir) && !fs::is_directory(output_dir))
    problems.push_back("run.output_dir: " + output_dir.string() +
                       " is a file, not a directory; choose another run.output_dir");
  if (config.run.device == Device::kCuda && !cuda_available)
    problems.push_back(
        "run.device: cuda was asked for but no CUDA device is visible; use auto or "
        "cpu");
  if (config.train.precision == Precision::kFp16 && config.run.device == Device::kAuto &&
      !cuda_available)
    problems.push_back(
        "train.precision: fp16 needs a CUDA device, and run.device: auto found "
        "none on this machine; use bf16 or fp32");
  if (config.train.freeze_layers > n_layer)
    problems.push_back("train.freeze_layers: " + std::to_string(config.train.freeze_layers) +
                       " is more than the model's " + std::to_string(n_layer) + " layers");
  return problems;
}

}  // namespace

void check_data_inputs(const Config& config) {
  if (config.data.seq_len == 0)  // load_config resolves 0 wherever the model's context is known
    throw InputError((fs::path(config.model.path) / "config.json").string(),
                     "cannot read the model's context for data.seq_len: 0; set data.seq_len");
  check_tokenizer_files(tokenizer_dir(config));
  data_files(config.data.train, "data.train");
  if (!config.data.validation.empty()) data_files(config.data.validation, "data.validation");
}

void check_inputs(const Config& config, bool cuda_available) {
  const int64_t n_layer = check_model_files(config);
  check_data_inputs(config);
  if (auto problems = broken_rules(config, n_layer, cuda_available); !problems.empty())
    throw ConfigError(problems);
}

}  // namespace lmtune
