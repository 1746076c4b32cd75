// Test tool: exposes lmtune's models (any architecture model_factory loads) to the e2e tests,
// which compare them with Hugging Face transformers.
//   gpt2_probe logits MODEL_DIR IDS_JSON OUT.safetensors   writes logits (B, T, V); prints
//                                                          {"loss": ...}
//   gpt2_probe resave MODEL_DIR OUT_DIR [MAX_SHARD_BYTES]  loads with lmtune, saves in HF layout
//   gpt2_probe greedy MODEL_DIR IDS_JSON N                 prints N greedy continuation ids of
//                                                          each row, as JSON, with the KV cache
#include <fstream>
#include <iostream>

#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/infer/generate.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/model_factory.h"

namespace {

std::vector<std::vector<int64_t>> read_ids(const char* file) {
  return nlohmann::json::parse(std::ifstream(file)).get<std::vector<std::vector<int64_t>>>();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lmtune;
  set_threads(/*requested=*/2);
  std::string verb = argc > 1 ? argv[1] : "";
  try {
    if (verb == "logits" && argc == 5) {
      CausalLM model = load_causal_lm(argv[2]);
      model->eval();
      auto ids = read_ids(argv[3]);
      std::vector<int64_t> flat;
      for (const auto& row : ids) flat.insert(flat.end(), row.begin(), row.end());
      auto idx = torch::tensor(flat).view({static_cast<int64_t>(ids.size()), -1});  // (B, T)
      torch::NoGradGuard no_grad;
      auto logits = model->forward(idx);  // (B, T, V)
      namespace I = torch::indexing;
      auto loss = lm_loss(logits.index({I::Slice(), I::Slice(I::None, -1)}),
                          idx.index({I::Slice(), I::Slice(1, I::None)}));
      write_safetensors(argv[4], {{"logits", logits}});
      std::cout << nlohmann::json{{"loss", loss.item<double>()}}.dump() << std::endl;
      return 0;
    }
    if (verb == "resave" && (argc == 4 || argc == 5)) {
      const int64_t max_shard_bytes = argc == 5 ? std::stoll(argv[4]) : kDefaultMaxShardBytes;
      save_hf_model(*load_causal_lm(argv[2]), argv[3], /*tokenizer=*/nullptr, max_shard_bytes);
      return 0;
    }
    if (verb == "greedy" && argc == 5) {
      CausalLM model = load_causal_lm(argv[2]);
      GenerateOptions options;
      options.temperature = 0;
      options.max_new_tokens = std::stoll(argv[4]);
      nlohmann::json out = nlohmann::json::array();
      for (const auto& row : read_ids(argv[3])) out.push_back(generate(model, row, options));
      std::cout << out.dump() << std::endl;
      return 0;
    }
  } catch (const Error& e) {
    std::cerr << e.what() << std::endl;
    return e.exit_code();
  }
  std::cerr << "usage: gpt2_probe logits MODEL_DIR IDS_JSON OUT | resave MODEL_DIR OUT_DIR "
               "[MAX_SHARD_BYTES] | greedy MODEL_DIR IDS_JSON N"
            << std::endl;
  return 2;
}
