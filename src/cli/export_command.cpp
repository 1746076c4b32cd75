// `lmtune export --gguf OUT.gguf --model DIR [--adapter DIR] [--dtype f32|f16|bf16|q8_0]`: a model
// (an adapter merged into it first) as a GGUF file that llama.cpp loads.
#include <spdlog/spdlog.h>

#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/io/tokenizer.h"
#include "lmtune/model/gguf_export.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/model_factory.h"

namespace lmtune::cli {
namespace {

struct ExportArgs {
  std::string gguf, model, adapter, dtype = "f16";
  int64_t threads = 0;
};

// The last component of a directory given as "runs/x/final/" or "runs/x/final".
std::string directory_name(const std::filesystem::path& dir) {
  std::filesystem::path normal = dir.lexically_normal();
  if (normal.filename().empty()) normal = normal.parent_path();
  const std::string name = normal.filename().string();
  return name.empty() || name == "." ? std::filesystem::absolute(dir).filename().string() : name;
}

void run_export(const ExportArgs& args) {
  namespace fs = std::filesystem;
  set_threads(args.threads);
  const GgufFileType file_type = parse_gguf_file_type(args.dtype);
  const fs::path out = args.gguf;
  if (fs::exists(out) || fs::is_symlink(out))
    throw UsageError("--gguf " + args.gguf +
                     ": exists; choose a new file (nothing is overwritten)");
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(parent))
    throw UsageError("--gguf " + args.gguf + ": the directory " + parent.string() +
                     " does not exist");
  const ModelSource source = resolve_model_source(args.model, args.adapter);
  // The adapter's own tokenizer when it carries one (lmtune writes it), else the base's.
  const bool adapter_tokenizer = !source.adapter.empty() && has_tokenizer_files(source.adapter);
  const fs::path tokenizer_dir = adapter_tokenizer ? source.adapter : source.base;
  check_tokenizer_files(tokenizer_dir);

  CausalLM model = source.adapter.empty() ? load_causal_lm(source.base)
                                          : load_merged_model(source.base, source.adapter);
  GgufExportOptions options;
  options.file_type = file_type;
  // The fine-tune's name when an adapter is merged, else the model's.
  options.name = directory_name(source.adapter.empty() ? source.base : source.adapter);
  options.settings = source.base / "config.json";
  const GgufExportSummary summary = export_gguf(*model, tokenizer_dir, out, options);
  spdlog::info("wrote {} ({} tensors, {} bytes, --dtype {})", out.string(), summary.tensors,
               summary.bytes, args.dtype);
  std::cout << nlohmann::json{{"out", out.string()},
                              {"tensors", summary.tensors},
                              {"bytes", summary.bytes}}
                   .dump()
            << std::endl;
}

}  // namespace

void add_export_command(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  auto* command = app.add_subcommand(
      "export", "Write a model (an adapter merged first) as a GGUF file for llama.cpp");
  set_help_footer(*command,
                  "one JSON line {\"out\", \"tensors\", \"bytes\"} naming the GGUF file written. "
                  "Keys, tensor names and dtypes: docs/gguf.md.");
  command->add_option("--gguf", args->gguf, "The GGUF file to write (must not exist)")->required();
  command->add_option("--model", args->model, "The model directory (HF layout), or an adapter")
      ->required();
  command->add_option("--adapter", args->adapter,
                      "A LoRA adapter directory (lmtune's or PEFT's) to merge into the model");
  command
      ->add_option("--dtype", args->dtype,
                   std::string("Type of the weights: ") + gguf_file_type_names() +
                       " (norms and biases stay f32)")
      ->capture_default_str();
  command->add_option("--threads", args->threads, "LibTorch threads; 0 = every core")
      ->capture_default_str();
  command->callback([args] { run_export(*args); });
}

}  // namespace lmtune::cli
