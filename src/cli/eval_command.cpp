// `lmtune eval CONFIG [--model DIR] [--set K=V]...`: validation loss and perplexity as one JSON
// line.
#include <iostream>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/train/evaluate.h"
#include "lmtune/train/plan.h"
#include "lmtune/train/precision.h"
#include "lmtune/train/setup.h"
#include "options.h"

namespace lmtune::cli {

void add_eval_command(CLI::App& app) {
  auto* command = app.add_subcommand("eval", "Evaluate a model on the config's validation data");
  auto options = std::make_shared<ConfigOptions>();
  auto model_dir = std::make_shared<std::string>();
  auto adapter_dir = std::make_shared<std::string>();
  add_config_options(*command, *options);
  set_help_footer(*command,
                  "one JSON line: {\"loss\", \"perplexity\", \"tokens\"} on the validation data.");
  command->add_option("--model", *model_dir,
                      "Model directory to evaluate instead of model.path (e.g. RUN/final; a LoRA "
                      "run's final/ is its adapter over the base it names)");
  command->add_option("--adapter", *adapter_dir,
                      "A LoRA adapter directory (lmtune's or PEFT's) evaluated over the model");
  command->callback([options, model_dir, adapter_dir] {
    std::vector<Override> model_overrides;
    if (!model_dir->empty()) {
      const ModelSource source = resolve_model_source(*model_dir, *adapter_dir);
      model_overrides = {{"model.path", source.base.string()}, {"model.init", "pretrained"}};
      if (!source.adapter.empty())
        model_overrides.push_back({"lora.adapter", source.adapter.string()});
    } else if (!adapter_dir->empty()) {
      model_overrides = {{"lora.adapter", *adapter_dir}};
    }
    Config config = load_checked_config(*options, Reads::kModelAndData, model_overrides);
    set_threads(config.run.threads);
    torch::Device device = resolve_device(config.run.device);
    // micro_batch_size: auto evaluates in the micro-batches a training step would use.
    for (const std::string& chosen :
         {resolve_auto_precision(config, device), resolve_auto_micro_batch(config, device)})
      if (!chosen.empty()) spdlog::info(chosen);
    auto tokenizer = load_tokenizer(tokenizer_dir(config));
    CausalLM model = build_model(config, *tokenizer, device).model;
    PreparedData data = prepare_data(config.data, *tokenizer, cache_root(config));
    if (data.validation.num_windows() == 0)
      throw UsageError(options->file +
                       ": no validation data: set data.validation or data.validation_split");
    EvalResult result = evaluate(model, data.validation, config.train.micro_batch_size,
                                 config.eval.max_batches, config.train.precision, device);
    std::cout << nlohmann::json{{"loss", result.loss},
                                {"perplexity", result.perplexity},
                                {"tokens", result.tokens}}
                     .dump()
              << std::endl;
  });
}

}  // namespace lmtune::cli
