// `lmtune prepare CONFIG [--set K=V]...`: builds (or reuses) the token cache without training.
#include <iostream>

#include "commands.h"
#include "lmtune/core/config.h"
#include "lmtune/core/runtime.h"
#include "lmtune/data/dataset.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/train/setup.h"
#include "options.h"

namespace lmtune::cli {

void add_prepare_command(CLI::App& app) {
  auto* command = app.add_subcommand("prepare",
                                     "Read, clean, tokenize and pack the data into the token "
                                     "cache (and, for a curriculum by loss, score the windows "
                                     "with the starting model); prints the report as one JSON "
                                     "line");
  auto options = std::make_shared<ConfigOptions>();
  add_config_options(*command, *options);
  set_help_footer(*command,
                  "the data report as one JSON line (documents, tokens, windows, cache directory); "
                  "progress goes to stderr.");
  command->callback([options] {
    Config config = load_checked_config(*options, Reads::kData);
    // A curriculum by loss is scored by the starting model here, once, into the cache.
    const bool score_loss = config.data.order == DataOrder::kCurriculum &&
                            config.data.curriculum_score == CurriculumScore::kLoss;
    if (score_loss) check_inputs(config, torch::cuda::is_available());
    set_threads(config.run.threads);
    auto tokenizer = load_tokenizer(tokenizer_dir(config));
    PreparedData data = prepare_data(config.data, *tokenizer, cache_root(config));
    log_prepare_report(data.report);
    if (score_loss) {
      const torch::Device device = resolve_device(config.run.device);
      curriculum_loss_scores(build_model(config, *tokenizer, device).model, data, device);
    }
    std::cout << data.report.to_json().dump() << std::endl;
  });
}

}  // namespace lmtune::cli
