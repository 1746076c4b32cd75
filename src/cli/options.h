// Options shared by the subcommands that take a config: CONFIG and repeated --set KEY=VALUE.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/cuda.h>
#include <CLI/CLI.hpp>

#include "lmtune/core/config.h"
#include "lmtune/train/preflight.h"

namespace lmtune::cli {

struct ConfigOptions {
  std::string file;
  std::vector<std::string> sets;

  std::vector<Override> overrides() const {
    std::vector<Override> parsed;
    for (const auto& text : sets) parsed.push_back(parse_override(text));
    return parsed;
  }
};

// What a command reads of the files a config names.
enum class Reads { kData, kModelAndData };

// The config of CONFIG with its --set overrides and `extra` ones, checked against the files the
// command reads and this machine before anything is loaded (lmtune/train/preflight.h).
inline Config load_checked_config(const ConfigOptions& options, Reads reads = Reads::kModelAndData,
                                  const std::vector<Override>& extra = {}) {
  std::vector<Override> overrides = options.overrides();
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  Config config = load_config(options.file, overrides);
  if (reads == Reads::kData)
    check_data_inputs(config);
  else
    check_inputs(config, torch::cuda::is_available());
  return config;
}

// An integer option's lower bound. CLI11's PositiveNumber and NonNegativeNumber say "Value 0 not
// in range 0.000000 to 1797...", whatever the bound; this says what is wanted:
// "--steps: must be at least 1, got 0".
inline CLI::Validator at_least(int64_t minimum) {
  return CLI::Validator(
      [minimum](std::string& text) -> std::string {
        int64_t value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "expected an integer, got " + text;
        if (value < minimum) return "must be at least " + std::to_string(minimum) + ", got " + text;
        return "";
      },
      minimum > 0 ? "POSITIVE" : "NONNEGATIVE");
}

inline void add_config_options(CLI::App& command, ConfigOptions& options, bool required = true) {
  command.add_option("CONFIG", options.file, "Config file (.json, .yaml or .yml)")
      ->required(required);
  command
      .add_option("--set", options.sets,
                  "Override a config key: --set train.lr=3e-5 (repeatable; dotted key paths)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
}

}  // namespace lmtune::cli
