// The subcommands of `lmtune`: each registers its options and callback on the application.
#pragma once

#include <CLI/CLI.hpp>

namespace lmtune::cli {

void add_bench_command(CLI::App& app);
void add_config_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);

}  // namespace lmtune::cli
