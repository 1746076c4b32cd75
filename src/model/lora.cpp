#include "lmtune/model/lora.h"

#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/text.h"
#include "lmtune/io/json_file.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/model/projection.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// PEFT names an adapter's tensors after the wrapped model: base_model.model.<HF name>.
constexpr const char* kPeftPrefix = "base_model.model.";
constexpr const char* kAllLinear = "all-linear";

// PEFT's rule for target_modules and modules_to_save given as names: a name matches a module
// whose full name is that name or ends with "." + name.
bool name_matches(const std::string& module, const std::string& name) {
  return module == name || ends_with(module, "." + name);
}

std::string last_component(const std::string& name) {
  return name.substr(name.rfind('.') + 1);
}

struct ProjectionSite {
  std::string name;     // lmtune's module name: h.0.attn.c_attn
  std::string hf_name;  // the HF module name: transformer.h.0.attn.c_attn
  std::shared_ptr<ProjectionImpl> projection;
  bool output_head = false;
};

// The HF name of the module `module` whose parameter `parameter` is: the parameter's HF name less
// the parameter's own name.
std::string hf_module_name(const CausalLMImpl& model, const std::string& module,
                           const std::string& parameter) {
  const std::string hf = model.hf_names(module + "." + parameter).front();
  return hf.substr(0, hf.size() - parameter.size() - 1);
}

std::vector<ProjectionSite> projection_sites(const CausalLMImpl& model) {
  std::vector<ProjectionSite> sites;
  for (const auto& item : model.named_modules()) {
    auto projection = std::dynamic_pointer_cast<ProjectionImpl>(item.value());
    if (!projection) continue;
    sites.push_back({item.key(), hf_module_name(model, item.key(), "weight"), projection,
                     item.key() == "lm_head"});
  }
  return sites;
}

void freeze_base(CausalLMImpl& model) {
  for (auto& item : model.named_parameters())
    if (!is_adapter_parameter(item.key())) item.value().requires_grad_(false);
}

// Unfreezes the parameters of the modules `names` match; ConfigError for a name matching none.
int64_t unfreeze_modules_to_save(CausalLMImpl& model, const std::vector<std::string>& names,
                                 const std::string& key) {
  int64_t count = 0;
  for (const auto& name : names) {
    bool matched = false;
    for (const auto& item : model.named_modules()) {
      auto direct = item.value()->named_parameters(/*recurse=*/false);
      if (direct.is_empty() || item.key().empty()) continue;
      if (!name_matches(hf_module_name(model, item.key(), direct.begin()->key()), name)) continue;
      matched = true;
      for (auto& p : direct) {
        if (is_adapter_parameter(p.key())) continue;
        p.value().requires_grad_(true);
        count += p.value().numel();
      }
    }
    if (!matched)
      throw ConfigError({fmt::format(
          "{}.modules_to_save: '{}' matches no module of this {} model (its output head is {}; "
          "embeddings: {})",
          key, name, model.spec().model_type,
          model.spec().tie_word_embeddings ? "tied to the token embedding" : "lm_head",
          model.embedding_names())});
  }
  return count;
}

// The spec's targets with PEFT's default filled in.
std::vector<std::string> resolved_targets(const CausalLMImpl& model, const LoraSpec& spec) {
  return spec.target_modules.empty() ? default_lora_targets(model.spec().model_type)
                                     : spec.target_modules;
}

// Adapter and saved-module tensors of an adapter file, by the model's parameter they belong to.
struct AdapterFileTensors {
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> lora;  // site name -> (A, B)
  std::map<std::string, torch::Tensor> saved;  // parameter name -> value (lmtune's layout)
};

AdapterFileTensors read_adapter_file(const CausalLMImpl& model, const SafetensorsFile& file) {
  std::map<std::string, std::string> site_by_hf;  // every HF spelling of a projection's name
  for (const auto& site : projection_sites(model))
    for (const auto& hf : model.hf_names(site.name + ".weight"))
      site_by_hf[hf.substr(0, hf.size() - std::string(".weight").size())] = site.name;
  std::map<std::string, std::string> parameter_by_hf;
  for (const auto& item : model.named_parameters())
    if (!is_adapter_parameter(item.key()))
      for (const auto& hf : model.hf_names(item.key())) parameter_by_hf[hf] = item.key();

  const std::string where = file.path().string();
  AdapterFileTensors out;
  for (const auto& entry : file.entries()) {
    if (entry.name.rfind(kPeftPrefix, 0) != 0)
      throw InputError(where, "tensor '" + entry.name + "' is not named base_model.model.*");
    const std::string name = entry.name.substr(std::string(kPeftPrefix).size());
    torch::Tensor value = file.read(entry).to(torch::kFloat32);
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    if (is_a || is_b) {
      const std::string module = name.substr(0, name.size() - std::string(".lora_A.weight").size());
      auto site = site_by_hf.find(module);
      if (site == site_by_hf.end())
        throw InputError(where, fmt::format("tensor '{}': this {} model has no linear layer '{}'",
                                            entry.name, model.spec().model_type, module));
      (is_a ? out.lora[site->second].first : out.lora[site->second].second) = value;
    } else if (name.find("lora_") != std::string::npos) {
      throw InputError(where, "tensor '" + entry.name +
                                  "' belongs to a kind of adapter lmtune does not run (LoRA on "
                                  "linear layers only: lora_A and lora_B)");
    } else {
      auto parameter = parameter_by_hf.find(name);
      if (parameter == parameter_by_hf.end())
        throw InputError(where, fmt::format("tensor '{}': no such tensor in this {} model",
                                            entry.name, model.spec().model_type));
      out.saved[parameter->second] = model.from_hf_layout(parameter->second, value);
    }
  }
  return out;
}

void copy_checked(torch::Tensor& target, const torch::Tensor& value, const std::string& file,
                  const std::string& name) {
  if (value.sizes() != target.sizes())
    throw InputError(file,
                     fmt::format("tensor '{}' has shape [{}], the model needs [{}]", name,
                                 fmt::join(value.sizes(), ", "), fmt::join(target.sizes(), ", ")));
  torch::NoGradGuard no_grad;
  target.copy_(value);
}

// Copies the saved modules' tensors into their parameters and unfreezes them.
int64_t load_saved_modules(CausalLMImpl& model, const AdapterFileTensors& tensors,
                           const std::string& file) {
  int64_t count = 0;
  auto parameters = model.named_parameters();
  for (const auto& [name, value] : tensors.saved) {
    torch::Tensor& target = parameters[name];
    copy_checked(target, value, file, name);
    target.requires_grad_(true);
    count += target.numel();
  }
  return count;
}

}  // namespace

double LoraSpec::scaling(int64_t rank) const {
  const double r = static_cast<double>(rank);
  return use_rslora ? alpha / std::sqrt(r) : alpha / r;
}

std::vector<std::string> default_lora_targets(const std::string& model_type) {
  if (model_type == "gpt2") return {"c_attn"};
  return {"q_proj", "v_proj"};
}

AdapterSummary attach_lora(CausalLMImpl& model, const LoraSpec& spec,
                           const std::string& key_prefix) {
  const std::vector<std::string> targets = resolved_targets(model, spec);
  const bool all_linear = targets.size() == 1 && targets[0] == kAllLinear;
  const std::string key = key_prefix + ".target_modules";
  if (!all_linear && std::find(targets.begin(), targets.end(), kAllLinear) != targets.end())
    throw ConfigError({key + ": all-linear cannot be combined with module names"});
  freeze_base(model);
  AdapterSummary summary;
  std::set<std::string> matched, adapted_names;
  const auto sites = projection_sites(model);
  for (const auto& site : sites) {
    bool chosen = all_linear && !site.output_head;
    for (const auto& target : targets)
      if (!all_linear && name_matches(site.hf_name, target)) chosen = true, matched.insert(target);
    if (!chosen) continue;
    site.projection->add_lora(spec.r, spec.scaling(spec.r), spec.dropout);
    adapted_names.insert(last_component(site.hf_name));
    summary.adapted_layers += 1;
    summary.adapter_parameters += site.projection->lora_A.numel() + site.projection->lora_B.numel();
  }
  for (const auto& target : targets) {
    if (all_linear || matched.count(target)) continue;
    std::set<std::string> names;
    for (const auto& site : sites)
      if (!site.output_head) names.insert(last_component(site.hf_name));
    throw ConfigError(
        {fmt::format("{}: '{}' matches no linear layer of this {} model; its layers "
                     "are {} (or all-linear)",
                     key, target, model.spec().model_type, fmt::join(names, ", "))});
  }
  summary.target_names =
      all_linear ? std::vector<std::string>(adapted_names.begin(), adapted_names.end()) : targets;
  summary.saved_module_parameters =
      unfreeze_modules_to_save(model, spec.modules_to_save, key_prefix);
  return summary;
}

bool has_lora(const CausalLMImpl& model) {
  for (const auto& site : projection_sites(model))
    if (site.projection->has_lora()) return true;
  return false;
}

NamedTensors adapter_tensors(const CausalLMImpl& model, const LoraSpec& /*spec*/) {
  auto host = [](const torch::Tensor& t) {
    return t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  };
  NamedTensors tensors;
  for (const auto& site : projection_sites(model)) {
    if (!site.projection->has_lora()) continue;
    tensors.emplace_back(kPeftPrefix + site.hf_name + ".lora_A.weight",
                         host(site.projection->lora_A));  // (r, in)
    tensors.emplace_back(kPeftPrefix + site.hf_name + ".lora_B.weight",
                         host(site.projection->lora_B));  // (out, r)
  }
  // modules_to_save: the base parameters that train.
  for (const auto& item : model.named_parameters()) {
    if (is_adapter_parameter(item.key()) || !item.value().requires_grad()) continue;
    // from_hf_layout is its own inverse (GPT-2's Conv1D transpose), so it gives HF's layout too.
    tensors.emplace_back(kPeftPrefix + model.hf_names(item.key()).front(),
                         host(model.from_hf_layout(item.key(), item.value())));
  }
  return tensors;
}

void save_adapter(const CausalLMImpl& model, const LoraSpec& spec, const AdapterSummary& summary,
                  const fs::path& dir, const std::string& base_model, const Tokenizer* tokenizer) {
  fs::create_directories(dir);
  write_safetensors(dir / kAdapterWeightsFile, adapter_tensors(model, spec), {{"format", "pt"}});
  // PEFT's LoraConfig fields; those left out take PEFT's defaults.
  json alpha = spec.alpha == std::floor(spec.alpha) ? json(static_cast<int64_t>(spec.alpha))
                                                    : json(spec.alpha);
  json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"base_model_name_or_path", base_model.empty() ? json(nullptr) : json(base_model)},
                 {"r", spec.r},
                 {"lora_alpha", alpha},
                 {"lora_dropout", spec.dropout},
                 {"use_rslora", spec.use_rslora},
                 {"target_modules", summary.target_names},
                 {"modules_to_save",
                  spec.modules_to_save.empty() ? json(nullptr) : json(spec.modules_to_save)},
                 // GPT-2's Conv1D stores (in, out): PEFT transposes when merging into it.
                 {"fan_in_fan_out", model.spec().model_type == "gpt2"},
                 {"bias", "none"},
                 {"use_dora", false},
                 {"init_lora_weights", true},
                 {"inference_mode", true},
                 {"rank_pattern", json::object()},
                 {"alpha_pattern", json::object()},
                 {"revision", nullptr},
                 {"layers_to_transform", nullptr},
                 {"layers_pattern", nullptr}};
  write_file_atomically(dir / kAdapterConfigFile, config.dump(2) + "\n");
  if (tokenizer) tokenizer->save(dir);
}

AdapterConfig read_adapter_config(const fs::path& dir) {
  const fs::path file = dir / kAdapterConfigFile;
  if (!fs::is_directory(dir)) throw InputError(dir.string(), "no such adapter directory");
  if (!fs::exists(file))
    throw InputError(dir.string(),
                     "not an adapter directory: no adapter_config.json (PEFT's or lmtune's)");
  const json j = read_json_file(file, "the adapter config", /*object=*/true);
  const std::string where = file.string();
  auto refuse = [&](const std::string& what) {
    throw InputError(where, what + "; lmtune runs plain LoRA adapters on linear layers");
  };
  // json::value() throws json::type_error on a field of another type ("peft_type": 1), so the
  // checks are inside the try too (tests/fuzz/adapter_config/review-*).
  try {
    if (j.value("peft_type", std::string("LORA")) != "LORA")
      refuse("peft_type " + j["peft_type"].dump() + " is not LORA");
    if (j.value("use_dora", false)) refuse("use_dora is true (DoRA)");
    if (j.value("bias", std::string("none")) != "none") refuse("bias is " + j["bias"].dump());
    if (j.value("lora_bias", false)) refuse("lora_bias is true");
    if (j.contains("alpha_pattern") && j["alpha_pattern"].is_object() &&
        !j["alpha_pattern"].empty())
      refuse("alpha_pattern sets per-module alphas");
    AdapterConfig out;
    out.spec.r = j.value("r", int64_t{8});
    out.spec.alpha = j.value("lora_alpha", 8.0);
    out.spec.dropout = j.value("lora_dropout", 0.0);
    out.spec.use_rslora = j.value("use_rslora", false);
    const json& targets = j.contains("target_modules") ? j["target_modules"] : json(nullptr);
    if (targets.is_string()) out.spec.target_modules = {targets.get<std::string>()};
    if (targets.is_array()) out.spec.target_modules = targets.get<std::vector<std::string>>();
    if (j.contains("modules_to_save") && j["modules_to_save"].is_array())
      out.spec.modules_to_save = j["modules_to_save"].get<std::vector<std::string>>();
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
      out.base_model = j["base_model_name_or_path"].get<std::string>();
    return out;
  } catch (const json::exception& e) {
    throw InputError(where, std::string("malformed field: ") + e.what());
  }
}

AdapterSummary load_adapter(CausalLMImpl& model, const fs::path& dir) {
  const AdapterConfig config = read_adapter_config(dir);
  const fs::path path = dir / kAdapterWeightsFile;
  if (!fs::exists(path))
    throw InputError(dir.string(),
                     "no adapter_model.safetensors (adapters saved as .bin are not "
                     "read; save with safe_serialization=True)");
  SafetensorsFile file(path);
  const AdapterFileTensors tensors = read_adapter_file(model, file);
  if (tensors.lora.empty()) throw InputError(path.string(), "holds no lora_A/lora_B tensors");
  freeze_base(model);
  AdapterSummary summary;
  summary.target_names = config.spec.target_modules;
  auto sites = projection_sites(model);
  for (auto& site : sites) {
    auto it = tensors.lora.find(site.name);
    if (it == tensors.lora.end()) continue;
    const auto& [a, b] = it->second;
    if (!a.defined() || !b.defined())
      throw InputError(path.string(), "layer '" + site.hf_name +
                                          "' has only one of lora_A and "
                                          "lora_B");
    const int64_t r = a.size(0);
    site.projection->add_lora(r, config.spec.scaling(r), config.spec.dropout);
    copy_checked(site.projection->lora_A, a, path.string(), site.hf_name + ".lora_A.weight");
    copy_checked(site.projection->lora_B, b, path.string(), site.hf_name + ".lora_B.weight");
    summary.adapted_layers += 1;
    summary.adapter_parameters += a.numel() + b.numel();
  }
  summary.saved_module_parameters = load_saved_modules(model, tensors, path.string());
  return summary;
}

void load_adapter_weights(CausalLMImpl& model, const LoraSpec& /*spec*/, const fs::path& path) {
  SafetensorsFile file(path);
  const AdapterFileTensors tensors = read_adapter_file(model, file);
  for (auto& site : projection_sites(model)) {
    if (!site.projection->has_lora()) continue;
    auto it = tensors.lora.find(site.name);
    if (it == tensors.lora.end() || !it->second.first.defined() || !it->second.second.defined())
      throw InputError(path.string(), "missing the adapter of layer '" + site.hf_name + "'");
    copy_checked(site.projection->lora_A, it->second.first, path.string(),
                 site.hf_name + ".lora_A.weight");
    copy_checked(site.projection->lora_B, it->second.second, path.string(),
                 site.hf_name + ".lora_B.weight");
  }
  for (const auto& item : model.named_parameters())
    if (!is_adapter_parameter(item.key()) && item.value().requires_grad() &&
        !tensors.saved.count(item.key()))
      throw InputError(path.string(), "missing the trained module tensor '" +
                                          model.hf_names(item.key()).front() + "'");
  load_saved_modules(model, tensors, path.string());
}

int64_t quantize_base(CausalLMImpl& model, QuantType type, bool double_quant) {
  int64_t bytes = 0;
  for (auto& site : projection_sites(model)) {
    if (site.output_head) continue;
    site.projection->quantize(type, double_quant);
    bytes += site.projection->quantized_weight().bytes();
  }
  return bytes;
}

void merge_lora(CausalLMImpl& model) {
  for (auto& site : projection_sites(model)) site.projection->merge_lora();
}

CausalLM load_merged_model(const fs::path& base_dir, const fs::path& adapter_dir) {
  CausalLM model = load_causal_lm(base_dir);
  load_adapter(*model, adapter_dir);
  merge_lora(*model);
  return model;
}

void write_merged_model(const fs::path& base_dir, const fs::path& adapter_dir,
                        const fs::path& out_dir, const Tokenizer* tokenizer) {
  save_hf_model(*load_merged_model(base_dir, adapter_dir), out_dir, tokenizer);
}

bool is_adapter_dir(const fs::path& dir) {
  return fs::exists(dir / kAdapterConfigFile) && !fs::exists(dir / "config.json");
}

ModelSource resolve_model_source(const fs::path& model, const fs::path& adapter) {
  if (!adapter.empty() || !is_adapter_dir(model)) return {model, adapter};
  const std::string base = read_adapter_config(model).base_model;
  if (base.empty() || !fs::is_directory(base))
    throw InputError(
        (model / kAdapterConfigFile).string(),
        "is an adapter whose base_model_name_or_path " +
            (base.empty() ? std::string("is not set") : "'" + base + "' is not a local directory") +
            "; name the base with --model BASE --adapter " + model.string());
  return {base, model};
}

}  // namespace lmtune
