#include "lmtune/train/setup.h"

#include <chrono>

#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/hash.h"
#include "lmtune/core/host_allocator.h"
#include "lmtune/core/runtime.h"
#include "lmtune/data/token_cache.h"
#include "lmtune/io/tokenizer_vocabulary.h"
#include "lmtune/model/gpt2.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/train/evaluate.h"

namespace lmtune {
namespace fs = std::filesystem;

torch::Device resolve_device(Device device, std::string_view source) {
  bool cuda = torch::cuda::is_available();
  if (device == Device::kCuda && !cuda)
    throw UsageError(std::string(source) +
                     ": cuda was asked for but no CUDA device is visible; use auto or cpu");
  if (device == Device::kCpu || !cuda) return torch::kCPU;
  return torch::kCUDA;
}

fs::path tokenizer_dir(const Config& config) {
  return config.model.tokenizer.empty() ? config.model.path : config.model.tokenizer;
}

fs::path cache_root(const Config& config) {
  return config.data.cache_dir.empty() ? machine_cache_dir() / "tokens"
                                       : fs::path(config.data.cache_dir);
}

namespace {

// Freezes the base and attaches the run's adapters: fresh ones (seeded by run.seed, drawn after the
// base is built) or those of lora.adapter, whose own settings then win.
AdapterSetup attach_adapters(const Config& config, CausalLMImpl& model) {
  AdapterSetup adapter;
  adapter.base_model = config.model.path;
  if (config.lora.adapter.empty()) {
    adapter.spec = lora_spec(config.lora);
    adapter.summary = attach_lora(model, adapter.spec);
  } else {
    adapter.spec = read_adapter_config(config.lora.adapter).spec;
    adapter.summary = load_adapter(model, config.lora.adapter);
  }
  return adapter;
}

// Throws unless the teacher's tokenizer spells every id as the student's does.
void check_same_vocabulary(const fs::path& student_dir, const fs::path& teacher_dir) {
  const TokenizerVocabulary student = read_tokenizer_vocabulary(student_dir, false);
  const TokenizerVocabulary teacher = read_tokenizer_vocabulary(teacher_dir, false);
  std::string difference;
  if (student.tokens.size() != teacher.tokens.size()) {
    difference = std::to_string(teacher.tokens.size()) + " tokens against the student's " +
                 std::to_string(student.tokens.size());
  } else {
    for (std::size_t id = 0; id < student.tokens.size() && difference.empty(); ++id) {
      const VocabularyToken &a = student.tokens[id], &b = teacher.tokens[id];
      if (a.defined != b.defined || a.text != b.text)
        difference =
            "token " + std::to_string(id) + " is '" + b.text + "', the student's '" + a.text + "'";
    }
  }
  if (!difference.empty())
    throw InputError(teacher_dir.string(),
                     "distill.teacher's tokenizer (" + teacher.file.string() +
                         ") is not the student's (" + student.file.string() + "): " + difference +
                         "; distillation needs a teacher with the student's vocabulary");
}

}  // namespace

CausalLM build_teacher(const Config& config, const CausalLM& student, torch::Device device) {
  const fs::path teacher_dir = config.distill.teacher;
  check_same_vocabulary(tokenizer_dir(config), teacher_dir);
  CausalLM teacher = load_causal_lm(teacher_dir, device);
  if (teacher->spec().vocab_size != student->spec().vocab_size)
    throw InputError(teacher_dir.string(), "distill.teacher's output vocabulary has " +
                                               std::to_string(teacher->spec().vocab_size) +
                                               " rows, the student's " +
                                               std::to_string(student->spec().vocab_size) +
                                               "; distillation needs the same vocabulary size");
  for (auto& p : teacher->parameters()) p.requires_grad_(false);
  teacher->eval();
  return teacher;
}

QuantType quant_type(Quantize quantize) {
  switch (quantize) {
    case Quantize::kInt8:
      return QuantType::kInt8;
    case Quantize::kNf4:
      return QuantType::kNf4;
    default:
      return QuantType::kNone;
  }
}

LoraSpec lora_spec(const LoraConfig& lora) {
  LoraSpec spec;
  spec.r = lora.r;
  spec.alpha = lora.alpha;
  spec.dropout = lora.dropout;
  spec.use_rslora = lora.use_rslora;
  spec.target_modules = lora.target_modules;
  spec.modules_to_save = lora.modules_to_save;
  return spec;
}

BuiltModel build_model(const Config& config, const Tokenizer& tokenizer, torch::Device device) {
  CausalLM model;
  std::string origin;
  const bool quantized = config.model.quantize != Quantize::kNone;
  if (config.model.init == ModelInit::kPretrained) {
    // A base to quantize is read into host memory first: the device never holds it in fp32.
    model = load_causal_lm(config.model.path, quantized ? torch::Device(torch::kCPU) : device);
    origin = config.model.path;
  } else {
    GPT2Config shape;
    shape.n_layer = config.model.n_layer;
    shape.n_head = config.model.n_head;
    shape.n_embd = config.model.n_embd;
    shape.n_positions = config.model.n_positions;
    shape.vocab_size = config.model.vocab_size;
    if (auto eos = tokenizer.eos_id()) shape.bos_token_id = shape.eos_token_id = *eos;
    GPT2 gpt2(shape);
    gpt2->init_weights(static_cast<uint64_t>(config.run.seed));
    model = gpt2;
    model->to(device);
    origin = "model.vocab_size";
  }
  const ModelSpec& c = model->spec();
  if (tokenizer.vocab_size() > c.vocab_size)
    throw InputError(origin, "the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                                 " tokens but the model's vocabulary only " +
                                 std::to_string(c.vocab_size));
  TORCH_CHECK(config.data.seq_len > 0, "data.seq_len 0 must be resolved by load_config");
  if (config.data.seq_len > c.context)
    throw ConfigError({"data.seq_len: must not exceed the model's context (" +
                       std::to_string(c.context) + " tokens), got " +
                       std::to_string(config.data.seq_len)});
  BuiltModel built{model, std::nullopt};
  if (quantized) {
    built.quantized_bytes =
        quantize_base(*model, quant_type(config.model.quantize), config.model.double_quant);
    trim_host_cache();  // the fp32 weights are gone: their memory goes back to the system
  }
  if (config.lora.enabled) built.adapter = attach_adapters(config, *model);
  model->set_vocab_padding(resolve_vocab_padding(config.train.vocab_padding, device));
  model->to(device);
  return built;
}

namespace {

// Every parameter and buffer of `model` (name, dtype, shape and bytes): what its losses depend on.
std::string weights_fingerprint(const CausalLM& model) {
  Hash64 hash;
  auto add = [&](const std::string& name, const torch::Tensor& tensor) {
    auto host = tensor.detach().to(torch::kCPU).contiguous();
    hash.update(name).update(std::string(c10::toString(host.scalar_type())));
    for (int64_t size : host.sizes()) hash.update_int(static_cast<uint64_t>(size));
    hash.update(std::string_view(static_cast<const char*>(host.data_ptr()), host.nbytes()));
  };
  for (const auto& item : model->named_parameters()) add(item.key(), item.value());
  for (const auto& item : model->named_buffers()) add(item.key(), item.value());
  return hash.hex();
}

}  // namespace

std::vector<double> curriculum_loss_scores(const CausalLM& model, const PreparedData& data,
                                           torch::Device device) {
  const fs::path file =
      score_file(data.report.cache_dir, "train", "loss",
                 {{"weights", weights_fingerprint(model)}, {"precision", "fp32"}});
  const int64_t windows = data.train.num_windows();
  if (auto scores = read_scores(file, windows)) {
    spdlog::info("curriculum: reusing the starting model's losses of {} windows in {}", windows,
                 file.string());
    return *scores;
  }
  spdlog::info("curriculum: scoring {} training windows with the starting model ...", windows);
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> scores = window_losses(model, data.train, device);
  write_scores(file, scores);
  spdlog::info("curriculum: scored {} windows in {:.1f} s into {}", windows,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               file.string());
  return scores;
}

}  // namespace lmtune
