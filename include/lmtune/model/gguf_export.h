// A model as llama.cpp loads it from GGUF: the architecture llama.cpp names it (gpt2, llama,
// qwen2, qwen3), its hyperparameters under llama.cpp's keys, its tensors under llama.cpp's names
// and layouts (GPT-2's Conv1D weights transposed, the q/k rows of the llama architecture
// permuted), and its tokenizer's vocabulary, merges and special tokens. Follows llama.cpp's
// convert_hf_to_gguf.py; docs/gguf.md lists each decision and what is not exported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lmtune {

class CausalLMImpl;

// The --dtype of `lmtune export --gguf`: llama.cpp's file types of the same names. Norms, biases,
// GPT-2's position embeddings and llama3 rope factors stay F32 in every one, as the converter
// keeps them.
enum class GgufFileType { kF32, kF16, kBF16, kQ8_0 };

// "f32, f16, bf16, q8_0", for help and messages.
const char* gguf_file_type_names();

// The file type a --dtype value names; UsageError (exit 2) naming the value and the choices.
GgufFileType parse_gguf_file_type(const std::string& name);

struct GgufExportOptions {
  GgufFileType file_type = GgufFileType::kF16;
  std::string name;  // general.name
  // The config.json the model came from: named in errors, and read for its special-token ids
  // (bos_token_id, ...) as the file holds them.
  std::filesystem::path settings;
};

struct GgufExportSummary {
  int64_t tensors = 0;
  int64_t bytes = 0;  // of the file
};

// Writes `model` (its adapters already merged) with the tokenizer of `tokenizer_dir` as a GGUF
// file at `out`, through `out`.tmp. A setting llama.cpp's architecture cannot run (Qwen3 with
// biases, llama3 rope scaling outside the llama architecture, a ReLU GPT-2) is an InputError
// naming options.settings; a vocabulary lmtune cannot list is an InputError naming its file.
GgufExportSummary export_gguf(const CausalLMImpl& model, const std::filesystem::path& tokenizer_dir,
                              const std::filesystem::path& out, const GgufExportOptions& options);

}  // namespace lmtune
