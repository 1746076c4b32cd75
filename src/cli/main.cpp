// Entry point of `lmtune`: parses the command line and maps lmtune's errors to exit codes.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/host_allocator.h"
#include "lmtune/core/runtime.h"
#include "lmtune/core/version.h"

namespace {

// Logs each line of an error message as its own error line.
void log_error(const std::string& message) {
  std::size_t start = 0;
  while (start <= message.size()) {
    std::size_t end = message.find('\n', start);
    spdlog::error(message.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
}

// "lmtune train --help" for the subcommand being parsed, else "lmtune --help".
std::string usage_hint(CLI::App& app) {
  const auto parsed = app.get_subcommands();
  return parsed.empty() ? "lmtune --help" : "lmtune " + parsed.front()->get_name() + " --help";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lmtune;
  init_logging(/*verbose=*/false);

  CLI::App app{"lmtune: fine-tune causal language models (GPT-2, Llama, Mistral, Qwen) on one GPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return version_report(); });
  app.add_flag_callback(
      "-v,--verbose", [] { spdlog::set_level(spdlog::level::debug); }, "Log debug messages");
  app.fallthrough();  // -v and --version work after the subcommand too
  cli::add_bench_command(app);
  cli::add_config_command(app);
  cli::add_generate_command(app);
  cli::add_merge_command(app);
  cli::add_plan_command(app);
  cli::add_train_command(app);
  cli::add_eval_command(app);
  cli::add_export_command(app);
  cli::add_prepare_command(app);
  cli::add_sweep_command(app);
  cli::add_tokenize_command(app);
  cli::add_tokenizer_command(app);

  try {
    install_host_cache();
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help and --version
    std::string what = e.what();
    if (app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-')
      what = "unknown command '" + std::string(argv[1]) + "'";
    log_error(what + "; see " + usage_hint(app));
    return kExitUsage;
  } catch (const Error& e) {
    log_error(e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    log_error(std::string("unexpected failure: ") + e.what());
    return kExitRuntime;
  }
  return kExitOk;
}
