// Options shared by the subcommands that take a config: CONFIG and repeated --set KEY=VALUE.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "lmtune/core/config.h"

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

inline void add_config_options(CLI::App& command, ConfigOptions& options) {
  command.add_option("CONFIG", options.file, "Config file (.json, .yaml or .yml)")->required();
  command
      .add_option("--set", options.sets,
                  "Override a config key: --set train.lr=3e-5 (repeatable; dotted key paths)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
}

}  // namespace lmtune::cli
