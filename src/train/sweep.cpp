#include "lmtune/train/sweep.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>

#include "lmtune/core/errors.h"
#include "lmtune/io/file_lock.h"
#include "lmtune/io/json_file.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/train/checkpoint.h"
#include "lmtune/train/distributed.h"
#include "lmtune/train/metrics.h"
#include "lmtune/train/preflight.h"
#include "lmtune/train/trainer.h"

namespace lmtune {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Reading the sweep file: every problem is collected, each as "FILE: KEY: message".

class SweepProblems {
 public:
  explicit SweepProblems(std::string file) : file_(std::move(file)) {}
  void add(const std::string& key, const std::string& message) {
    messages_.push_back(file_ + ": " + key + ": " + message);
  }
  void throw_if_any() {
    if (!messages_.empty()) throw ConfigError(std::move(messages_));
  }

 private:
  std::string file_;
  std::vector<std::string> messages_;
};

std::string join_key(const std::string& where, const std::string& name) {
  return where.empty() ? name : where + "." + name;
}

// Reports the keys of `node` (a mapping at `where`) that are not among `known`.
void reject_unknown(const json& node, const std::string& where,
                    const std::vector<std::string>& known, SweepProblems& problems) {
  for (const auto& [name, value] : node.items()) {
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    std::string message = "unknown key";
    if (auto guess = closest_name(name, known)) message += "; did you mean '" + *guess + "'?";
    problems.add(join_key(where, name), message);
  }
}

std::optional<int64_t> read_int(const json& node, const std::string& where, const char* name,
                                int64_t minimum, SweepProblems& problems) {
  auto it = node.find(name);
  if (it == node.end() || it->is_null()) return std::nullopt;
  const std::string key = join_key(where, name);
  if (!it->is_number_integer()) {
    problems.add(key, "expected an integer, got " + describe_value(*it));
    return std::nullopt;
  }
  const auto value = it->get<int64_t>();
  if (value < minimum) {
    problems.add(key, "must be >= " + std::to_string(minimum) + ", got " + std::to_string(value));
    return std::nullopt;
  }
  return value;
}

std::optional<double> read_number(const json& node, const std::string& where, const char* name,
                                  SweepProblems& problems) {
  auto it = node.find(name);
  const std::string key = join_key(where, name);
  if (it == node.end() || it->is_null()) {
    problems.add(key, "missing; a " + std::string(name) + " bound is required");
    return std::nullopt;
  }
  if (!it->is_number() || !std::isfinite(it->get<double>())) {
    problems.add(key, "expected a number, got " + describe_value(*it));
    return std::nullopt;
  }
  return it->get<double>();
}

const std::vector<std::string> kParamTypes = {"loguniform", "uniform", "int", "choice"};

std::optional<SearchParam> read_param(const std::string& config_key, const json& node,
                                      const std::vector<KeyInfo>& keys, SweepProblems& problems) {
  const std::string where = "space." + config_key;
  const auto info = std::find_if(keys.begin(), keys.end(),
                                 [&](const KeyInfo& k) { return k.path == config_key; });
  if (info == keys.end()) {
    problems.add(where, "not a config key: " + unknown_config_key_message(config_key) +
                            " (docs/config.md lists them)");
    return std::nullopt;
  }
  if (config_key == "run.output_dir") {
    problems.add(where, "the sweep gives every trial its own run directory under its output_dir");
    return std::nullopt;
  }
  if (!node.is_object()) {
    problems.add(where,
                 "expected a mapping such as {type: loguniform, low: 1.0e-5, high: 1.0e-2}, "
                 "got " +
                     describe_value(node));
    return std::nullopt;
  }
  SearchParam p;
  p.key = config_key;
  auto type = node.find("type");
  if (type == node.end() || !type->is_string() ||
      std::find(kParamTypes.begin(), kParamTypes.end(), type->get<std::string>()) ==
          kParamTypes.end()) {
    problems.add(where + ".type", "expected one of loguniform, uniform, int, choice, got " +
                                      (type == node.end() ? "nothing" : describe_value(*type)));
    return std::nullopt;
  }
  const std::string kind = type->get<std::string>();
  if (kind == "choice") {
    p.kind = ParamKind::kChoice;
    reject_unknown(node, where, {"type", "values"}, problems);
    auto values = node.find("values");
    if (values == node.end() || !values->is_array() || values->empty()) {
      problems.add(where + ".values", "expected a non-empty list of the values to try");
      return std::nullopt;
    }
    p.values.assign(values->begin(), values->end());
    return p;
  }
  p.kind = kind == "loguniform" ? ParamKind::kLogUniform
           : kind == "uniform"  ? ParamKind::kUniform
                                : ParamKind::kInt;
  reject_unknown(node, where,
                 p.kind == ParamKind::kInt ? std::vector<std::string>{"type", "low", "high", "log"}
                                           : std::vector<std::string>{"type", "low", "high"},
                 problems);
  const bool integer_key = info->type == "integer";
  if (info->type != "number" && !integer_key) {
    problems.add(where + ".type", kind + " needs a numeric key; " + config_key + " is " +
                                      info->type + " (use type: choice)");
    return std::nullopt;
  }
  if (integer_key && p.kind != ParamKind::kInt) {
    problems.add(where + ".type", config_key + " takes integers: use type: int");
    return std::nullopt;
  }
  const auto low = read_number(node, where, "low", problems);
  const auto high = read_number(node, where, "high", problems);
  if (!low || !high) return std::nullopt;
  p.low = *low;
  p.high = *high;
  if (auto log = node.find("log"); log != node.end()) {
    if (!log->is_boolean()) {
      problems.add(where + ".log", "expected true or false, got " + describe_value(*log));
      return std::nullopt;
    }
    p.log = log->get<bool>();
  }
  if (!(p.low < p.high)) {
    problems.add(where, "low must be below high");
    return std::nullopt;
  }
  if (p.kind == ParamKind::kInt && (p.low != std::floor(p.low) || p.high != std::floor(p.high))) {
    problems.add(where, "type int needs integer bounds");
    return std::nullopt;
  }
  if (p.kind == ParamKind::kLogUniform && p.low <= 0) {
    problems.add(where + ".low", "loguniform needs low > 0");
    return std::nullopt;
  }
  if (p.kind == ParamKind::kInt && p.log && p.low < 1) {
    problems.add(where + ".low", "an int on a log scale needs low >= 1");
    return std::nullopt;
  }
  return p;
}

void read_sampler(const json& tree, SweepSpec& spec, SweepProblems& problems) {
  auto it = tree.find("sampler");
  if (it == tree.end() || it->is_null()) return;
  json node = it->is_string() ? json{{"type", *it}} : *it;
  if (!node.is_object()) {
    problems.add("sampler",
                 "expected tpe, random, or a mapping {type: tpe, startup_trials: 10, "
                 "candidates: 24}, got " +
                     describe_value(*it));
    return;
  }
  reject_unknown(node, "sampler", {"type", "startup_trials", "candidates"}, problems);
  auto type = node.find("type");
  if (type != node.end()) {
    if (*type == "tpe")
      spec.sampler.kind = SamplerKind::kTpe;
    else if (*type == "random")
      spec.sampler.kind = SamplerKind::kRandom;
    else
      problems.add(it->is_string() ? "sampler" : "sampler.type",
                   "expected tpe or random, got " + describe_value(*type));
  }
  if (auto n = read_int(node, "sampler", "startup_trials", 0, problems))
    spec.sampler.startup_trials = *n;
  if (auto n = read_int(node, "sampler", "candidates", 1, problems)) spec.sampler.candidates = *n;
}

void read_pruning(const json& tree, const Config& base, SweepSpec& spec, SweepProblems& problems) {
  auto it = tree.find("pruning");
  if (it == tree.end() || it->is_null() || *it == "none" || *it == false) return;
  if (!it->is_object()) {
    problems.add("pruning",
                 "expected none or a mapping {metric: eval_loss, min_steps: N, "
                 "reduction_factor: 3}, got " +
                     describe_value(*it));
    return;
  }
  reject_unknown(*it, "pruning", {"metric", "min_steps", "reduction_factor"}, problems);
  if (auto metric = it->find("metric"); metric != it->end() && *metric != "eval_loss")
    problems.add("pruning.metric", "only eval_loss is supported, got " + describe_value(*metric));
  spec.pruning.enabled = true;
  spec.pruning.min_steps = base.eval.every_steps;
  if (auto n = read_int(*it, "pruning", "min_steps", 1, problems)) spec.pruning.min_steps = *n;
  if (auto n = read_int(*it, "pruning", "reduction_factor", 2, problems))
    spec.pruning.reduction_factor = *n;
  if (base.eval.every_steps == 0)
    problems.add("pruning", "needs evaluations during training: set eval.every_steps in the base");
}

// The base config: inline, or the path of a config file (relative to the sweep file).
void read_base(const json& tree, const fs::path& file, SweepSpec& spec, SweepProblems& problems) {
  auto it = tree.find("base");
  const fs::path sweep_dir = fs::absolute(file).parent_path();
  if (it == tree.end() || it->is_null()) {
    problems.add("base", "missing: give the base config inline or as the path of a config file");
  } else if (it->is_string()) {
    fs::path path = it->get<std::string>();
    if (path.is_relative()) path = (sweep_dir / path).lexically_normal();
    spec.base = read_config_tree(path);
    spec.base_dir = path.parent_path();
    spec.base_source = path.string();
  } else if (it->is_object()) {
    spec.base = *it;
    spec.base_dir = sweep_dir;
    spec.base_source = file.string() + " (base)";
  } else {
    problems.add("base", "expected a config mapping or the path of a config file, got " +
                             describe_value(*it));
  }
}

// The config a set of parameter values makes of the base, running in `run_dir`.
Config apply_params(const SweepSpec& spec, const json& params, const fs::path& run_dir) {
  json tree = spec.base;
  for (const auto& [key, value] : params.items()) {
    std::string pointer = "/" + key;
    std::replace(pointer.begin(), pointer.end(), '.', '/');
    tree[json::json_pointer(pointer)] = value;
  }
  tree["run"]["output_dir"] = run_dir.string();
  return load_config_tree(std::move(tree), spec.base_dir, spec.base_source);
}

// Every value a parameter may take at its ends (or each choice) must give a valid config, so
// that a typo in a bound fails now rather than in trial 17.
void check_space_values(const SweepSpec& spec, SweepProblems& problems) {
  for (const auto& p : spec.space) {
    std::vector<json> values = p.values;
    if (p.kind == ParamKind::kInt)
      values = {static_cast<int64_t>(p.low), static_cast<int64_t>(p.high)};
    if (p.kind == ParamKind::kLogUniform || p.kind == ParamKind::kUniform) values = {p.low, p.high};
    for (const auto& value : values) {
      try {
        apply_params(spec, json{{p.key, value}}, spec.output_dir / "check");
      } catch (const ConfigError& e) {
        const std::string prefix = spec.base_source + ": ";
        for (std::string message : e.problems()) {
          if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
          problems.add("space." + p.key, value.dump() + " gives an invalid config: " + message);
        }
      }
    }
  }
}

std::string params_text(const json& params) {
  std::string text;
  for (const auto& [key, value] : params.items())
    text += (text.empty() ? "" : ", ") + key + "=" + value.dump();
  return text;
}

std::string loss_text(const std::optional<double>& value) {
  return value ? fmt::format("{:.4f}", *value) : "-";
}

std::string ordinal(int64_t n) {
  const char* suffix = (n % 100 >= 11 && n % 100 <= 13) ? "th"
                       : n % 10 == 1                    ? "st"
                       : n % 10 == 2                    ? "nd"
                       : n % 10 == 3                    ? "rd"
                                                        : "th";
  return std::to_string(n) + suffix;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

json SweepSpec::definition() const {
  json space_json = json::object();
  for (const auto& p : space) {
    json entry;
    switch (p.kind) {
      case ParamKind::kLogUniform:
        entry = {{"type", "loguniform"}, {"low", p.low}, {"high", p.high}};
        break;
      case ParamKind::kUniform:
        entry = {{"type", "uniform"}, {"low", p.low}, {"high", p.high}};
        break;
      case ParamKind::kInt:
        entry = {{"type", "int"},
                 {"low", static_cast<int64_t>(p.low)},
                 {"high", static_cast<int64_t>(p.high)},
                 {"log", p.log}};
        break;
      case ParamKind::kChoice:
        entry = {{"type", "choice"}, {"values", p.values}};
        break;
    }
    space_json[p.key] = entry;
  }
  json base_config = config_to_json(load_config_tree(base, base_dir, base_source));
  base_config["run"].erase("output_dir");
  return {{"base", base_config},
          {"space", space_json},
          {"sampler",
           {{"type", sampler.kind == SamplerKind::kTpe ? "tpe" : "random"},
            {"startup_trials", sampler.startup_trials},
            {"candidates", sampler.candidates}}},
          {"seed", sampler.seed},
          {"pruning", pruning.enabled ? json{{"metric", "eval_loss"},
                                             {"min_steps", pruning.min_steps},
                                             {"reduction_factor", pruning.reduction_factor}}
                                      : json("none")}};
}

SweepSpec load_sweep(const fs::path& file) {
  const json tree = read_config_tree(file, "a mapping of sweep keys (base, space, trials, ...)");
  SweepProblems problems(file.string());
  reject_unknown(tree, "", {"base", "space", "trials", "sampler", "seed", "pruning", "output_dir"},
                 problems);
  SweepSpec spec;
  spec.file = file;
  read_base(tree, file, spec, problems);
  if (spec.base.is_null()) problems.throw_if_any();  // nothing to check the space against
  const Config base = load_config_tree(spec.base, spec.base_dir, spec.base_source);

  const auto keys = config_keys();
  auto space = tree.find("space");
  if (space == tree.end() || !space->is_object() || space->empty()) {
    problems.add("space",
                 "expected a mapping of config keys to search, such as "
                 "{train.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}}");
  } else {
    for (const auto& [key, node] : space->items())
      if (auto p = read_param(key, node, keys, problems)) spec.space.push_back(std::move(*p));
  }
  if (auto n = read_int(tree, "", "trials", 1, problems))
    spec.trials = *n;
  else if (!tree.contains("trials"))
    problems.add("trials", "missing: how many trials to run");
  read_sampler(tree, spec, problems);
  if (auto seed = read_int(tree, "", "seed", 0, problems))
    spec.sampler.seed = static_cast<uint64_t>(*seed);
  read_pruning(tree, base, spec, problems);

  const fs::path sweep_dir = fs::absolute(file).parent_path();
  spec.output_dir = fs::current_path() / "runs" / file.stem();
  if (auto out = tree.find("output_dir"); out != tree.end()) {
    if (!out->is_string() || out->get<std::string>().empty())
      problems.add("output_dir", "expected a directory path, got " + describe_value(*out));
    else
      spec.output_dir = (sweep_dir / out->get<std::string>()).lexically_normal();
  }
  if (base.data.validation.empty() && base.data.validation_split == 0)
    problems.add("base",
                 "trials are scored on their validation loss: give the base "
                 "data.validation or data.validation_split");
  problems.throw_if_any();
  check_space_values(spec, problems);
  problems.throw_if_any();
  return spec;
}

// ---------------------------------------------------------------------------------------------

json TrialRecord::to_json() const {
  json rung_list = json::array();
  for (const auto& [step, loss] : rungs) rung_list.push_back({{"step", step}, {"eval_loss", loss}});
  json out = {{"trial", number}, {"state", state},     {"params", params},   {"eval_loss", nullptr},
              {"steps", steps},  {"rungs", rung_list}, {"seconds", seconds}, {"run_dir", run_dir}};
  if (value) out["eval_loss"] = *value;
  if (!error.empty()) out["error"] = error;
  return out;
}

TrialRecord TrialRecord::from_json(const json& in) {
  TrialRecord r;
  r.number = in.at("trial").get<int64_t>();
  r.state = in.at("state").get<std::string>();
  r.params = in.at("params");
  for (const auto& rung : in.at("rungs"))
    r.rungs.emplace_back(rung.at("step").get<int64_t>(), rung.at("eval_loss").get<double>());
  if (!in.at("eval_loss").is_null()) r.value = in.at("eval_loss").get<double>();
  r.steps = in.at("steps").get<int64_t>();
  r.seconds = in.at("seconds").get<double>();
  r.error = in.value("error", "");
  r.run_dir = in.at("run_dir").get<std::string>();
  return r;
}

Sweep::Sweep(SweepSpec spec, bool resume) : spec_(std::move(spec)), resume_(resume) {}

namespace {

std::vector<TrialRecord> read_trials(const fs::path& file) {
  std::vector<TrialRecord> records;
  std::ifstream in(file);
  if (!in) throw InputError(file.string(), "cannot be read");
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    try {
      records.push_back(TrialRecord::from_json(json::parse(line)));
    } catch (const json::exception& e) {
      throw InputError(file.string(),
                       fmt::format("line {}: not a trial record ({})", number, e.what()));
    }
    if (records.back().number != static_cast<int64_t>(records.size()))
      throw InputError(file.string(), fmt::format("line {}: expected trial {}, found trial {}",
                                                  number, records.size(), records.back().number));
  }
  return records;
}

// The first key of `a` whose value differs in `b`.
std::optional<std::string> first_difference(const json& a, const json& b) {
  for (const auto& [key, value] : a.items())
    if (!b.contains(key) || b.at(key) != value) return key;
  for (const auto& [key, value] : b.items())
    if (!a.contains(key)) return key;
  return std::nullopt;
}

}  // namespace

void Sweep::open_output_dir() {
  const fs::path& out = spec_.output_dir;
  const fs::path trials_file = out / "trials.jsonl";
  const fs::path definition_file = out / "sweep.json";
  const json definition = spec_.definition();
  if (fs::exists(definition_file)) {
    if (!resume_)
      throw UsageError("output_dir: " + out.string() +
                       " already holds a sweep; continue it with lmtune sweep " +
                       spec_.file.string() + " --resume, or choose another output_dir");
    const json saved = read_json_file(definition_file, "the sweep's definition", true);
    if (auto key = first_difference(saved, definition))
      throw ConfigError({spec_.file.string() + ": " + *key + ": differs from the sweep in " +
                         out.string() +
                         " (its sweep.json); a resumed sweep must search the same "
                         "space from the same base (only trials may change)"});
    if (fs::exists(trials_file)) records_ = read_trials(trials_file);
  }
  write_file_atomically(definition_file, definition.dump(2) + "\n");
}

SweepResult Sweep::run() {
  if (auto env = torchrun_env(); env && env->world_size > 1)
    throw UsageError("lmtune sweep runs its trials in one process; start it without torchrun");
  // The files every trial reads (model, tokenizer, data) are checked before anything is written.
  check_inputs(apply_params(spec_, json::object(), spec_.output_dir / "check"),
               torch::cuda::is_available());
  std::error_code error;
  fs::create_directories(spec_.output_dir, error);
  if (error)
    throw Error("output_dir: cannot create " + spec_.output_dir.string() + ": " + error.message());
  pid_t holder = 0;
  auto lock = FileLock::try_lock(spec_.output_dir / "sweep.lock", holder);
  if (!lock)
    throw UsageError("output_dir: " + spec_.output_dir.string() +
                     " is in use by another lmtune sweep (pid " + std::to_string(holder) + ")");
  open_output_dir();
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(
      (spec_.output_dir / "sweep.log").string(), /*truncate=*/false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  log_file_ = std::make_shared<spdlog::logger>("sweep.log", sink);
  log_file_->flush_on(spdlog::level::info);

  const auto finished = std::count_if(records_.begin(), records_.end(),
                                      [](const TrialRecord& r) { return r.finished(); });
  if (!records_.empty())
    log(fmt::format("sweep: resuming {}: {} of {} trials finished", spec_.output_dir.string(),
                    finished, spec_.trials));
  for (int64_t number = 1; number <= spec_.trials; ++number) {
    const auto index = static_cast<std::size_t>(number - 1);
    if (index < records_.size() && records_[index].finished()) continue;
    if (index == records_.size()) {
      TrialRecord record;
      record.number = number;
      record.params = propose(spec_.sampler, spec_.space, history(index), number);
      record.run_dir = (spec_.output_dir / fmt::format("trial-{:04d}", number)).string();
      records_.push_back(std::move(record));
      write_files();
    }
    TrialRecord& record = records_[index];
    log(fmt::format("sweep: trial {}/{}: {}", number, spec_.trials, params_text(record.params)));
    run_trial(record);
    write_files();
    const auto best = best_trial();
    log(fmt::format(
        "sweep: trial {}/{} {}: eval loss {} after {} steps{}; best so far: {}", number,
        spec_.trials, record.state, loss_text(record.value), record.steps,
        record.error.empty() ? "" : " (" + record.error + ")",
        best ? fmt::format("trial {}, {:.4f}", records_[*best].number, *records_[*best].value)
             : std::string("none")));
  }
  return {records_, best_trial(), spec_.output_dir};
}

void Sweep::log(const std::string& text) const {
  spdlog::info(text);
  if (log_file_) log_file_->info(text);
}

int64_t Sweep::rung_step(std::size_t rung) const {
  int64_t step = spec_.pruning.min_steps;
  for (std::size_t k = 0; k < rung; ++k) {
    if (step > std::numeric_limits<int64_t>::max() / spec_.pruning.reduction_factor)
      return std::numeric_limits<int64_t>::max();
    step *= spec_.pruning.reduction_factor;
  }
  return step;
}

void Sweep::run_trial(TrialRecord& record) {
  const fs::path run_dir = record.run_dir;
  std::optional<fs::path> resume_from;
  if (auto step = newest_complete_step(run_dir)) {
    resume_from = run_dir;
    // Rungs past the checkpoint are judged again as the resumed trial reaches them.
    record.rungs.erase(std::remove_if(record.rungs.begin(), record.rungs.end(),
                                      [&](const auto& rung) { return rung.first > *step; }),
                       record.rungs.end());
    log(fmt::format("sweep: trial {} continues from its checkpoint at step {}", record.number,
                    *step));
  } else {
    remove_tree(run_dir);  // a trial killed before its first checkpoint starts over
    record.rungs.clear();
  }
  auto fail = [&](const std::string& why) {
    record.state = "failed";
    record.error = why;
  };
  try {
    const Config config = trial_config(record);
    check_inputs(config, torch::cuda::is_available());
    Trainer trainer(config, resume_from);
    trainer.judge_evaluations(
        [this, &record](int64_t step, double loss) { return judge(record, step, loss); });
    trainer.setup();
    const TrainSummary summary = trainer.train();
    record.steps = summary.steps;
    record.seconds = summary.seconds;
    if (summary.pruned) {
      record.state = "pruned";
    } else if (summary.last_eval) {
      record.state = "complete";
      record.value = summary.last_eval->loss;
    } else {
      fail("no validation loss at the end of training");
    }
  } catch (const Interrupted&) {
    write_files();
    throw Interrupted(fmt::format(
        "sweep interrupted in trial {} (its checkpoint is in {}); continue with lmtune sweep {} "
        "--resume",
        record.number, run_dir.string(), spec_.file.string()));
  } catch (const InputError&) {
    throw;  // the same for every trial: the sweep stops, and this trial reruns on --resume
  } catch (const UsageError&) {
    throw;
  } catch (const ConfigError& e) {
    std::string why;
    for (const auto& problem : e.problems()) why += (why.empty() ? "" : "; ") + problem;
    fail(why);
  } catch (const std::exception& e) {
    // Divergence (too many non-finite steps), running out of memory: this trial's values.
    fail(e.what());
  }
}

bool Sweep::judge(TrialRecord& record, int64_t step, double eval_loss) {
  if (!spec_.pruning.enabled) return false;
  bool prune = false;
  bool judged = false;
  while (!prune && step >= rung_step(record.rungs.size())) {
    const std::size_t rung = record.rungs.size();
    std::vector<double> others;
    for (const auto& other : records_)
      if (other.number != record.number && other.rungs.size() > rung)
        others.push_back(other.rungs[rung].second);
    record.rungs.emplace_back(step, eval_loss);
    prune = !promoted_at_rung(eval_loss, others, spec_.pruning.reduction_factor);
    judged = true;
    const auto better =
        std::count_if(others.begin(), others.end(), [&](double v) { return v < eval_loss; });
    log(
        fmt::format("sweep: trial {} at rung {} (step {}): eval loss {:.4f}, {} of {} trials "
                    "there: {}",
                    record.number, rung, step, eval_loss, ordinal(better + 1), others.size() + 1,
                    prune ? "pruned" : "continues"));
  }
  if (prune) {
    record.state = "pruned";
    record.value = eval_loss;
    record.steps = step;
  }
  if (judged) write_files();
  return prune;
}

Config Sweep::trial_config(const TrialRecord& record) const {
  return apply_params(spec_, record.params, record.run_dir);
}

std::vector<Observation> Sweep::history(std::size_t before) const {
  std::vector<Observation> observations;
  for (std::size_t i = 0; i < before && i < records_.size(); ++i) {
    const TrialRecord& r = records_[i];
    if ((r.state != "complete" && r.state != "pruned") || !r.value) continue;
    observations.push_back(
        {r.params, r.state == "pruned", static_cast<int64_t>(r.rungs.size()), *r.value});
  }
  return observations;
}

std::optional<std::size_t> Sweep::best_trial() const {
  std::optional<std::size_t> best;
  for (std::size_t i = 0; i < records_.size(); ++i) {
    const TrialRecord& r = records_[i];
    if (r.state != "complete" || !r.value || !std::isfinite(*r.value)) continue;
    if (!best || *r.value < *records_[*best].value) best = i;
  }
  return best;
}

void Sweep::write_files() const {
  const fs::path& out = spec_.output_dir;
  std::string lines;
  for (const auto& record : records_) lines += record.to_json().dump() + "\n";
  write_file_atomically(out / "trials.jsonl", lines);

  const auto best = best_trial();
  std::ostringstream table;
  const auto count = [&](const char* state) {
    return std::count_if(records_.begin(), records_.end(),
                         [&](const TrialRecord& r) { return r.state == state; });
  };
  table << "# Sweep " << spec_.file.string() << "\n\n"
        << fmt::format("{} of {} trials: {} complete, {} pruned, {} failed, {} running. ",
                       records_.size(), spec_.trials, count("complete"), count("pruned"),
                       count("failed"), count("running"));
  if (best)
    table << fmt::format("Best: trial {}, eval loss {:.4f} (best.json).\n\n",
                         records_[*best].number, *records_[*best].value);
  else
    table << "No trial has completed yet.\n\n";
  table << "| trial | state | eval loss | steps |";
  for (const auto& p : spec_.space) table << " " << p.key << " |";
  table << " seconds |\n|---:|---|---:|---:|";
  for (std::size_t i = 0; i < spec_.space.size(); ++i) table << "---:|";
  table << "---:|\n";
  for (std::size_t i = 0; i < records_.size(); ++i) {
    const TrialRecord& r = records_[i];
    table << "| " << r.number << (best && *best == i ? " (best)" : "") << " | " << r.state << " | "
          << loss_text(r.value) << " | " << r.steps << " |";
    for (const auto& p : spec_.space) {
      auto value = r.params.find(p.key);
      table << " "
            << (value == r.params.end()    ? "-"
                : value->is_number_float() ? fmt::format("{:.4g}", value->get<double>())
                                           : value->dump())
            << " |";
    }
    table << fmt::format(" {:.1f} |\n", r.seconds);
  }
  write_file_atomically(out / "summary.md", table.str());

  if (!best) return;
  // The best trial's resolved config, as its run recorded it, training into OUTPUT_DIR/best.
  const TrialRecord& winner = records_[*best];
  json config =
      read_json_file(fs::path(winner.run_dir) / "config.json", "the best trial's config", true);
  config["run"]["output_dir"] = (out / "best").string();
  write_file_atomically(out / "best.json", config.dump(2) + "\n");
}

}  // namespace lmtune
