// `lmtune config CONFIG [--set K=V]...`: validates a config and prints it resolved, as JSON;
// `lmtune config --keys` prints the key reference instead.
#include <iostream>

#include "commands.h"
#include "lmtune/core/config.h"
#include "lmtune/core/errors.h"
#include "options.h"

namespace lmtune::cli {

void add_config_command(CLI::App& app) {
  auto* command = app.add_subcommand("config",
                                     "Validate a config and print it resolved as JSON, "
                                     "every default filled in");
  auto options = std::make_shared<ConfigOptions>();
  auto keys = std::make_shared<bool>(false);
  add_config_options(*command, *options, /*required=*/false);
  command->add_flag("--keys", *keys,
                    "Print every config key with its type, default, range and meaning (the "
                    "tables of docs/config.md) instead");
  set_help_footer(*command,
                  "the resolved config as JSON, every default filled in, after checking the "
                  "files it names and this machine; with --keys, the key reference as Markdown.");
  command->callback([options, keys] {
    if (*keys) {
      std::cout << config_keys_markdown();
      return;
    }
    if (options->file.empty()) throw UsageError("config: CONFIG is required (or give --keys)");
    Config config = load_checked_config(*options);
    std::cout << config_to_json(config).dump(2) << std::endl;
  });
}

}  // namespace lmtune::cli
