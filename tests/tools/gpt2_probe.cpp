// Test tool: exposes lmtune's GPT-2 to the e2e tests, which compare it with Hugging Face.
//   gpt2_probe logits MODEL_DIR IDS_JSON OUT.safetensors   writes logits (B, T, V); prints {"loss":
//   ...} gpt2_probe resave MODEL_DIR OUT_DIR                   loads with lmtune and saves in HF
//   layout
#include <fstream>
#include <iostream>

#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/gpt2.h"

int main(int argc, char** argv) {
  using namespace lmtune;
  set_threads(/*requested=*/2);
  std::string verb = argc > 1 ? argv[1] : "";
  try {
    if (verb == "logits" && argc == 5) {
      GPT2 model = load_gpt2(argv[2]);
      model->eval();
      auto ids =
          nlohmann::json::parse(std::ifstream(argv[3])).get<std::vector<std::vector<int64_t>>>();
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
    if (verb == "resave" && argc == 4) {
      save_gpt2(load_gpt2(argv[2]), argv[3]);
      return 0;
    }
  } catch (const Error& e) {
    std::cerr << e.what() << std::endl;
    return e.exit_code();
  }
  std::cerr << "usage: gpt2_probe logits MODEL_DIR IDS_JSON OUT | resave MODEL_DIR OUT_DIR"
            << std::endl;
  return 2;
}
