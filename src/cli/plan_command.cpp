// `lmtune plan CONFIG [--set K=V]...`: the predicted peak memory of training CONFIG, by part,
// whether it fits the device, and the settings that would make it fit; reads only the config and
// the model's config.json.
#include <cmath>
#include <iostream>

#include <fmt/format.h>

#include "commands.h"
#include "lmtune/core/runtime.h"
#include "lmtune/train/plan.h"
#include "lmtune/train/precision.h"
#include "lmtune/train/setup.h"
#include "options.h"

namespace lmtune::cli {
namespace {

constexpr int kLabelWidth = 64;

void print_table(const MemoryPlan& plan, const DeviceMemory& memory) {
  std::cout << fmt::format("{:<{}} {:>9} {:>9}\n", "part", kLabelWidth, "size MB", "at peak");
  for (const auto& part : plan.parts) {
    if (part.size_mb < 0.05 && part.peak_mb < 0.05) continue;
    std::cout << fmt::format("{:<{}} {:>9.0f} {:>9.0f}\n", part.label, kLabelWidth, part.size_mb,
                             part.peak_mb);
  }
  std::cout << fmt::format("{:<{}} {:>9} {:>9.0f}\n", "predicted peak, " + plan.peak_moment,
                           kLabelWidth, "", plan.total_mb);
  const std::string where = memory.device.is_cuda()
                                ? "free on " + memory.device.str()
                                : std::string("available on the CPU (MemAvailable + this process)");
  std::cout << fmt::format("{:<{}} {:>9} {:>9.0f}\n", where, kLabelWidth, "", memory.available_mb);
  if (plan_fits(plan, memory))
    std::cout << fmt::format("fits, with {:.0f} MB to spare\n",
                             memory.available_mb - plan.total_mb);
  else
    std::cout << fmt::format("does not fit: {:.0f} MB over\n", plan.total_mb - memory.available_mb);
}

void print_levers(const std::vector<Lever>& levers) {
  if (levers.empty()) return;
  std::cout << "levers (each on top of the config; predicted peak):\n";
  for (const auto& lever : levers)
    std::cout << fmt::format("  {:<58} {:>7.0f} MB  {}  {}\n", lever.what, lever.total_mb,
                             lever.fits ? "fits" : "too big", lever_flags(lever));
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "plan", "Predict the peak memory of training a config, by part, before loading anything");
  auto options = std::make_shared<ConfigOptions>();
  add_config_options(*command, *options);
  set_help_footer(*command,
                  "a table of the predicted peak by part (MB), whether it fits the device "
                  "(the CPU's MemAvailable or the GPU's free memory) and the levers that lower it; "
                  "then one JSON line: parts, total_mb, fits, available_mb, levers. Reads only the "
                  "config and the model's config.json (docs/memory.md, \"What fits\").");
  command->callback([options] {
    Config config = load_config(options->file, options->overrides());
    set_threads(config.run.threads);
    const DeviceMemory memory = measure_device_memory(resolve_device(config.run.device));
    const std::string precision = resolve_auto_precision(config, memory.device);
    const ModelCensus census = census_of(config, memory);
    std::string micro = std::to_string(config.train.micro_batch_size);
    if (config.train.micro_batch_size == kAutoMicroBatch) {
      const MicroBatchChoice choice = choose_micro_batch(config, census, memory);
      config.train.micro_batch_size = choice.micro_batch_size;
      config.train.grad_accum_steps = choice.grad_accum_steps;
      micro = fmt::format("auto: {}", choice.micro_batch_size);
    }
    const MemoryPlan plan = plan_memory(config, census, memory);
    std::cout << fmt::format(
        "{} model, {:.1f} M parameters, {:.1f} M trainable; {}, {}; micro-batch {} x {} tokens, "
        "{} accumulated\n",
        census.model_type, census.parameters / 1e6, census.trainable / 1e6, memory.device.str(),
        precision.empty() ? enum_name(config.train.precision)
                          : "auto: " + std::string(enum_name(config.train.precision)),
        micro, config.data.seq_len, plan.grad_accum_steps);
    print_table(plan, memory);
    const std::vector<Lever> levers = plan_levers(config, census, memory);
    print_levers(levers);
    nlohmann::json line = plan_json(plan, memory);
    line["levers"] = nlohmann::json::array();
    for (const auto& lever : levers)
      line["levers"].push_back({{"what", lever.what},
                                {"set", lever_flags(lever)},
                                {"total_mb", std::round(lever.total_mb * 10) / 10},
                                {"fits", lever.fits}});
    std::cout << line.dump() << std::endl;
  });
}

}  // namespace lmtune::cli
