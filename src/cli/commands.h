// The subcommands of `lmtune`: each registers its options and callback on the application.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace lmtune::cli {

// The end of a command's --help: what it prints on stdout, the exit codes, and where the config
// keys are documented.
inline void set_help_footer(CLI::App& command, const std::string& prints) {
  command.footer(
      "Prints: " + prints +
      "\nExit codes: 0 success; 1 runtime failure; 2 bad usage or config; 3 bad input file "
      "(data, model, tokenizer, checkpoint); 130 interrupted by SIGINT/SIGTERM (train saves a "
      "checkpoint first, unless it has not started its steps; a second signal exits at "
      "once).\nConfig keys: docs/config.md; `lmtune config CONFIG` prints a "
      "config resolved. Errors go to stderr as lines starting with 'lmtune error:'.");
}

void add_bench_command(CLI::App& app);
void add_config_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_merge_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_sweep_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_tokenizer_command(CLI::App& app);

}  // namespace lmtune::cli
