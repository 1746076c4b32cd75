// `lmtune config CONFIG [--set K=V]...`: validates a config and prints it resolved, as JSON.
#include <iostream>

#include "commands.h"
#include "lmtune/core/config.h"
#include "options.h"

namespace lmtune::cli {

void add_config_command(CLI::App& app) {
  auto* command = app.add_subcommand("config",
                                     "Validate a config and print it resolved as JSON, "
                                     "every default filled in");
  auto options = std::make_shared<ConfigOptions>();
  add_config_options(*command, *options);
  command->callback([options] {
    Config config = load_config(options->file, options->overrides());
    std::cout << config_to_json(config).dump(2) << std::endl;
  });
}

}  // namespace lmtune::cli
