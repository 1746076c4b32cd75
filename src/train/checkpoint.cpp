#include "lmtune/train/checkpoint.h"
#include "lmtune/io/json_file.h"
#include "lmtune/model/hf_model_files.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <spdlog/spdlog.h>

#include "lmtune/core/errors.h"
#include "lmtune/core/hash.h"
#include "lmtune/core/test_hooks.h"
#include "lmtune/core/version.h"
#include "lmtune/io/atomic_file.h"
#include "lmtune/io/mapped_file.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/lora.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// File names inside a checkpoint directory.
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kCompleteFile = "COMPLETE";
constexpr const char* kStepPrefix = "step-";
constexpr const char* kTempPrefix = ".tmp-step-";

// Config keys that may change on resume: they do not change the maths of the steps already
// taken or to come (a longer run, other logging, evaluation or saving intervals, paths of outputs).
const std::vector<std::string> kResumableKeys = {"run.output_dir",
                                                 "run.threads",
                                                 "run.dist_timeout_s",
                                                 "run.device",
                                                 "train.max_steps",
                                                 "train.epochs",
                                                 "train.max_nonfinite_steps",
                                                 "data.cache_dir",
                                                 "eval.",
                                                 "logging.",
                                                 "checkpoint."};

std::string to_hex(const uint8_t* bytes, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * size, '0');
  for (std::size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

torch::Tensor from_hex(const std::string& hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw std::invalid_argument("not a hex digit");
  };
  if (hex.size() % 2 != 0) throw std::invalid_argument("odd number of hex digits");
  torch::Tensor bytes = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
  uint8_t* out = bytes.data_ptr<uint8_t>();
  for (std::size_t i = 0; i < hex.size() / 2; ++i)
    out[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return bytes;
}

std::string generator_state_hex(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  torch::Tensor state = generator.get_state();
  return to_hex(state.data_ptr<uint8_t>(), static_cast<std::size_t>(state.numel()));
}

void set_generator_state(at::Generator generator, const std::string& hex) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  try {
    generator.set_state(from_hex(hex));
  } catch (const c10::Error& e) {
    // LibTorch's check of the state's size (a CUDA state from another LibTorch version).
    throw Error(std::string("cannot restore the checkpoint's random generator state: ") +
                e.what_without_backtrace());
  }
}

// A generator state in trainer_state.json must be hex (from_hex throws std::invalid_argument on
// anything else) and, for the CPU, as long as this LibTorch's (its own check throws c10::Error):
// both are checked where the file is known (tests/fuzz/trainer_state/review-*).
void check_rng_state(const std::string& hex, const std::string& file, const char* field,
                     bool is_cpu) {
  const bool is_hex =
      hex.size() % 2 == 0 && hex.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!is_hex)
    throw InputError(file, std::string(field) + ": not a generator state (lowercase hex)");
  if (!is_cpu) return;
  const std::size_t expected = generator_state_hex(at::detail::getDefaultCPUGenerator()).size();
  if (hex.size() != expected)
    throw InputError(file, std::string(field) + ": a generator state of " +
                               std::to_string(hex.size() / 2) + " bytes; this LibTorch's has " +
                               std::to_string(expected / 2));
}

std::string file_checksum(const fs::path& path) {
  MappedFile file(path);
  Hash64 hash;
  hash.update(std::string_view(reinterpret_cast<const char*>(file.bytes()), file.size()));
  std::string checksum = "fnv1a64:";
  checksum += hash.hex();
  return checksum;
}

// The step of a "step-XXXXXXXX" directory name, or -1.
int64_t step_of(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name.rfind(kStepPrefix, 0) != 0) return -1;
  std::string digits = name.substr(std::string(kStepPrefix).size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// Checkpoint directories of a run, newest first.
std::vector<fs::path> list_checkpoints(const fs::path& run_dir) {
  std::vector<fs::path> dirs;
  fs::path root = run_dir / "checkpoints";
  if (!fs::is_directory(root)) return dirs;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && step_of(entry.path()) >= 0) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end(),
            [](const fs::path& a, const fs::path& b) { return step_of(a) > step_of(b); });
  return dirs;
}

void flatten(const json& node, const std::string& prefix, std::map<std::string, json>& out) {
  if (node.is_object() && !node.empty()) {
    for (const auto& [key, value] : node.items())
      flatten(value, prefix.empty() ? key : prefix + "." + key, out);
  } else {
    out[prefix] = node;
  }
}

bool resumable_key(const std::string& key) {
  for (const auto& allowed : kResumableKeys) {
    bool prefix = allowed.back() == '.';
    if (prefix ? key.rfind(allowed, 0) == 0 : key == allowed) return true;
  }
  return false;
}

}  // namespace

namespace {

// Writes each TrainerState field at its JSON pointer; an empty optional as null.
struct StateWriter {
  json& out;
  template <class T>
  void operator()(const T& value, const char* pointer) {
    out[json::json_pointer(pointer)] = value;
  }
  template <class T>
  void operator()(const std::optional<T>& value, const char* pointer) {
    out[json::json_pointer(pointer)] = value ? json(*value) : json(nullptr);
  }
};

// Reads each TrainerState field from its JSON pointer; a missing one throws json::exception,
// except an optional one, which stays empty.
struct StateReader {
  const json& in;
  template <class T>
  void operator()(T& value, const char* pointer) {
    value = in.at(json::json_pointer(pointer)).get<T>();
  }
  template <class T>
  void operator()(std::optional<T>& value, const char* pointer) {
    const json::json_pointer at(pointer);
    const bool present = in.contains(at) && !in.at(at).is_null();
    value = present ? std::optional<T>(in.at(at).get<T>()) : std::nullopt;
  }
};

}  // namespace

json TrainerState::to_json() const {
  json out = {{"format_version", kCheckpointFormatVersion}};
  StateWriter writer{out};
  TrainerState copy = *this;  // visit() is shared with the reader, so it takes a mutable state
  copy.visit(writer);
  // Written for people reading the file; not read back.
  out["epoch"] = data_position.epoch;
  out["lr_schedule"]["step"] = step;
  out["versions"] = {
      {"lmtune", lmtune_version()}, {"git", kGitRevision}, {"libtorch", libtorch_version()}};
  return out;
}

TrainerState TrainerState::from_json(const json& j, const std::string& file) {
  try {
    if (j.at("format_version").get<int>() != kCheckpointFormatVersion)
      throw InputError(file, "checkpoint format version " + j.at("format_version").dump() +
                                 " is not the " + std::to_string(kCheckpointFormatVersion) +
                                 " this lmtune reads");
    TrainerState s;
    StateReader reader{j};
    s.visit(reader);
    check_rng_state(s.cpu_rng_state, file, "rng.cpu", /*is_cpu=*/true);
    for (const auto& state : s.cuda_rng_states)
      check_rng_state(state, file, "rng.cuda", /*is_cpu=*/false);
    return s;
  } catch (const json::exception& e) {
    throw InputError(file, std::string("missing or malformed field: ") + e.what());
  }
}

void capture_rng_state(TrainerState& state) {
  state.cpu_rng_state = generator_state_hex(at::detail::getDefaultCPUGenerator());
  state.cuda_rng_states.clear();
  if (!torch::cuda::is_available()) return;
  for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i)
    state.cuda_rng_states.push_back(
        generator_state_hex(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i))));
}

void restore_rng_state(const TrainerState& state) {
  set_generator_state(at::detail::getDefaultCPUGenerator(), state.cpu_rng_state);
  if (!torch::cuda::is_available()) return;
  // A checkpoint from a CPU run carries no CUDA state: the CUDA generators keep their seeding.
  const auto devices = static_cast<std::size_t>(torch::cuda::device_count());
  for (std::size_t i = 0; i < std::min(devices, state.cuda_rng_states.size()); ++i)
    set_generator_state(
        at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<int64_t>(i))),
        state.cuda_rng_states[i]);
}

std::string config_hash(const json& config) {
  return Hash64().update(config.dump()).hex();
}

fs::path checkpoint_dir(const fs::path& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return run_dir / "checkpoints" / name;
}

fs::path save_checkpoint(const fs::path& run_dir, const CausalLM& model, const Tokenizer& tokenizer,
                         const AdamW& optimizer, const TrainerState& state,
                         const AdapterSetup* adapter) {
  const fs::path final_dir = checkpoint_dir(run_dir, state.step);
  const fs::path tmp = final_dir.parent_path() / (kTempPrefix + std::to_string(state.step) + "-" +
                                                  std::to_string(::getpid()));
  remove_tree(tmp);
  fs::create_directories(tmp);
  try {
    // config.json, model.safetensors (one file, whatever its size), tokenizer: loads in HF; or
    // the adapter, which loads in PEFT over the base.
    if (adapter)
      save_adapter(*model, adapter->spec, adapter->summary, tmp, adapter->base_model, &tokenizer);
    else
      save_hf_model(*model, tmp, &tokenizer, /*max_shard_bytes=*/INT64_MAX);
    kill_here_if_testing("save", state.step);
    NamedTensors moments;
    for (const auto& s : optimizer.state()) {
      moments.emplace_back(s.name + ".exp_avg", s.exp_avg);
      moments.emplace_back(s.name + ".exp_avg_sq", s.exp_avg_sq);
      moments.emplace_back(s.name + ".step", s.step);
    }
    write_safetensors(tmp / kOptimizerFile, moments, {{"format", "lmtune-adamw"}});
    write_file_atomically(tmp / kStateFile, state.to_json().dump(2) + "\n");
    json complete = {{"format_version", kCheckpointFormatVersion},
                     {"step", state.step},
                     {"files", json::object()}};
    for (const auto& entry : fs::directory_iterator(tmp))
      complete["files"][entry.path().filename().string()] = file_checksum(entry.path());
    write_file_atomically(tmp / kCompleteFile, complete.dump(2) + "\n");
    if (fs::exists(final_dir)) remove_tree(final_dir);  // a stale copy of this very step
    fs::rename(tmp, final_dir);
  } catch (...) {
    std::error_code ignored;
    remove_tree(tmp, ignored);
    throw;
  }
  kill_here_if_testing("rename", state.step);
  // The rename is durable only once checkpoints/ is synced (and the run directory, which holds
  // checkpoints/ since the first save); until then a power cut could undo it.
  sync_directory(final_dir.parent_path());
  sync_directory(run_dir);
  return final_dir;
}

TrainerState read_checkpoint(const fs::path& dir) {
  const fs::path complete_file = dir / kCompleteFile;
  if (!fs::exists(complete_file))
    throw InputError(dir.string(),
                     "incomplete checkpoint: no COMPLETE marker (the save was interrupted)");
  json complete = read_json_file(complete_file);
  if (!complete.contains("files") || !complete["files"].is_object())
    throw InputError(complete_file.string(), "has no list of files");
  for (const char* required : {kOptimizerFile, kStateFile})
    if (!complete["files"].contains(required))
      throw InputError(complete_file.string(), std::string("does not list ") + required);
  if (!complete["files"].contains(kModelFile) && !complete["files"].contains(kAdapterWeightsFile))
    throw InputError(complete_file.string(),
                     std::string("lists neither ") + kModelFile + " nor " + kAdapterWeightsFile);
  for (const auto& [name, checksum] : complete["files"].items()) {
    fs::path file = dir / name;
    if (!fs::exists(file)) throw InputError(file.string(), "missing from the checkpoint");
    if (file_checksum(file) != checksum)
      throw InputError(file.string(), "checksum mismatch: the file is corrupt");
  }
  return TrainerState::from_json(read_json_file(dir / kStateFile), (dir / kStateFile).string());
}

fs::path find_resume_checkpoint(const fs::path& run_or_checkpoint) {
  if (!fs::is_directory(run_or_checkpoint))
    throw InputError(run_or_checkpoint.string(), "no such run or checkpoint directory");
  if (fs::exists(run_or_checkpoint / kStateFile) || step_of(run_or_checkpoint) >= 0) {
    read_checkpoint(run_or_checkpoint);  // a checkpoint named explicitly must be valid
    return run_or_checkpoint;
  }
  auto candidates = list_checkpoints(run_or_checkpoint);
  for (const auto& dir : candidates) {
    try {
      read_checkpoint(dir);
      return dir;
    } catch (const InputError& e) {
      spdlog::warn("skipping checkpoint {}: {}", dir.filename().string(), e.what());
    }
  }
  throw InputError(run_or_checkpoint.string(),
                   candidates.empty()
                       ? "no checkpoints to resume from (checkpoints/ is empty or missing); "
                         "start the run without --resume"
                       : "none of its " + std::to_string(candidates.size()) +
                             " checkpoints is usable (see the warnings above); resume from "
                             "another run or checkpoint directory with --resume DIR, or "
                             "delete its checkpoints/ to start over");
}

std::optional<int64_t> newest_complete_step(const fs::path& run_dir) {
  for (const auto& dir : list_checkpoints(run_dir))
    if (fs::exists(dir / kCompleteFile)) return step_of(dir);
  return std::nullopt;
}

void load_checkpoint_weights(const fs::path& dir, const CausalLM& model, AdamW& optimizer,
                             const AdapterSetup* adapter) {
  const bool adapter_checkpoint = fs::exists(dir / kAdapterWeightsFile);
  if (adapter_checkpoint != (adapter != nullptr))
    throw InputError(dir.string(), adapter_checkpoint
                                       ? "holds an adapter, but the config trains the whole model"
                                       : "holds a whole model, but the config trains an adapter");
  if (adapter)
    load_adapter_weights(*model, adapter->spec, dir / kAdapterWeightsFile);
  else
    load_hf_weights(*model, HfWeights(dir));
  SafetensorsFile moments(dir / kOptimizerFile);
  torch::NoGradGuard no_grad;
  for (auto& s : optimizer.state()) {
    for (auto [suffix, target] : {std::pair<const char*, torch::Tensor*>{".exp_avg", &s.exp_avg},
                                  {".exp_avg_sq", &s.exp_avg_sq},
                                  {".step", &s.step}}) {
      const SafetensorsEntry* entry = moments.find(s.name + suffix);
      if (!entry)
        throw InputError(moments.path().string(),
                         "missing optimizer tensor '" + s.name + suffix + "'");
      torch::Tensor value = moments.read(*entry);
      if (value.sizes() != target->sizes())
        throw InputError(moments.path().string(),
                         "optimizer tensor '" + s.name + suffix + "' has the wrong shape");
      target->copy_(value);
    }
  }
}

ConfigChanges compare_configs(const json& saved, const json& now) {
  std::map<std::string, json> before, after;
  flatten(saved, "", before);
  flatten(now, "", after);
  std::set<std::string> keys;
  for (const auto& [k, v] : before) keys.insert(k);
  for (const auto& [k, v] : after) keys.insert(k);
  ConfigChanges changes;
  for (const auto& key : keys) {
    json a = before.count(key) ? before[key] : json(nullptr);
    json b = after.count(key) ? after[key] : json(nullptr);
    if (a == b) continue;
    std::string line = key + ": " + a.dump() + " -> " + b.dump();
    (resumable_key(key) ? changes.accepted : changes.refused).push_back(line);
  }
  return changes;
}

void apply_retention(const fs::path& run_dir, int64_t keep_last) {
  const std::string own_suffix = std::string("-") + std::to_string(::getpid());
  fs::path root = run_dir / "checkpoints";
  if (!fs::is_directory(root)) return;
  for (const auto& entry : fs::directory_iterator(root)) {
    std::string name = entry.path().filename().string();
    bool ours = name.size() >= own_suffix.size() &&
                name.compare(name.size() - own_suffix.size(), own_suffix.size(), own_suffix) == 0;
    if (name.rfind(kTempPrefix, 0) == 0 && !ours) remove_tree(entry.path());  // a crashed save
  }
  std::vector<fs::path> complete;
  for (const auto& dir : list_checkpoints(run_dir))
    if (fs::exists(dir / kCompleteFile)) complete.push_back(dir);
  std::optional<fs::path> best;
  double best_loss = 0;
  for (const auto& dir : complete) {
    json state = json::parse(std::ifstream(dir / kStateFile), nullptr, /*allow_exceptions=*/false);
    if (state.is_object() && state.contains("eval_loss") && state["eval_loss"].is_number() &&
        (!best || state["eval_loss"].get<double>() < best_loss)) {
      best = dir;
      best_loss = state["eval_loss"].get<double>();
    }
  }
  for (std::size_t i = static_cast<std::size_t>(keep_last); i < complete.size(); ++i) {
    if (best && complete[i] == *best) continue;
    remove_tree(complete[i]);
    kill_here_if_testing("retention", step_of(complete.front()));
  }
}

}  // namespace lmtune
