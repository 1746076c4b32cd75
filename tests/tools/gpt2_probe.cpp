// Test tool: exposes lmtune's models (any architecture model_factory loads) to the e2e tests,
// which compare them with Hugging Face transformers.
//   gpt2_probe logits MODEL_DIR IDS_JSON OUT.safetensors   writes logits (B, T, V); prints
//                                                          {"loss": ...}
//   gpt2_probe resave MODEL_DIR OUT_DIR [MAX_SHARD_BYTES]  loads with lmtune, saves in HF layout
//   gpt2_probe greedy MODEL_DIR IDS_JSON N [BATCH_SIZE]    prints N greedy continuation ids of
//                                                          each row, as JSON, with the KV cache;
//                                                          one row at a time, or BATCH_SIZE rows
//                                                          per batch (generate_batch)
//   gpt2_probe lora-grads MODEL_DIR ADAPTER_DIR IDS_JSON OUT.safetensors
//                                                          the model with the adapter (not merged):
//                                                          writes logits and, for every trained
//                                                          tensor, grad.<lmtune name> of the
//                                                          next-token loss; prints {"loss": ...}
//   gpt2_probe distill STUDENT TEACHER IDS_JSON TARGETS_JSON ALPHA TEMPERATURE kl|reverse_kl
//                      CHUNK OUT.safetensors               the distillation terms of the student
//                                                          on inputs IDS and TARGETS (-100 kept
//                                                          out) in fp32, chunks of CHUNK tokens;
//                                                          writes grad.<lmtune name> of
//                                                          (1 - ALPHA) CE + ALPHA T^2 KL (sums);
//                                                          prints {"ce": sum, "kl": sum}
#include <fstream>
#include <iostream>

#include "lmtune/core/errors.h"
#include "lmtune/core/runtime.h"
#include "lmtune/infer/generate.h"
#include "lmtune/io/safetensors.h"
#include "lmtune/model/hf_model_files.h"
#include "lmtune/model/lora.h"
#include "lmtune/model/model_factory.h"
#include "lmtune/train/evaluate.h"

namespace {

std::vector<std::vector<int64_t>> read_ids(const char* file) {
  return nlohmann::json::parse(std::ifstream(file)).get<std::vector<std::vector<int64_t>>>();
}

torch::Tensor ids_tensor(const char* file) {
  auto ids = read_ids(file);
  std::vector<int64_t> flat;
  for (const auto& row : ids) flat.insert(flat.end(), row.begin(), row.end());
  return torch::tensor(flat).view({static_cast<int64_t>(ids.size()), -1});  // (B, T)
}

// The next-token loss of idx (B, T) under `logits` (B, T, V).
torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& idx) {
  namespace I = torch::indexing;
  return lmtune::lm_loss(logits.index({I::Slice(), I::Slice(I::None, -1)}),
                         idx.index({I::Slice(), I::Slice(1, I::None)}));
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
      auto idx = ids_tensor(argv[3]);
      torch::NoGradGuard no_grad;
      auto logits = model->forward(idx);  // (B, T, V)
      auto loss = next_token_loss(logits, idx);
      write_safetensors(argv[4], {{"logits", logits}});
      std::cout << nlohmann::json{{"loss", loss.item<double>()}}.dump() << std::endl;
      return 0;
    }
    if (verb == "lora-grads" && argc == 6) {
      CausalLM model = load_causal_lm(argv[2]);
      load_adapter(*model, argv[3]);
      model->eval();  // no dropout; gradients still flow
      auto idx = ids_tensor(argv[4]);
      auto logits = model->forward(idx);  // (B, T, V)
      auto loss = next_token_loss(logits, idx);
      loss.backward();
      NamedTensors out{{"logits", logits.detach()}};
      for (const auto& item : model->named_parameters())
        if (item.value().requires_grad())
          out.emplace_back("grad." + item.key(), item.value().grad());
      write_safetensors(argv[5], out);
      std::cout << nlohmann::json{{"loss", loss.item<double>()}}.dump() << std::endl;
      return 0;
    }
    if (verb == "distill" && argc == 11) {
      CausalLM student = load_causal_lm(argv[2]), teacher = load_causal_lm(argv[3]);
      student->eval();  // no dropout; gradients still flow
      teacher->eval();
      Batch batch;
      batch.inputs = ids_tensor(argv[4]);   // (B, T)
      batch.targets = ids_tensor(argv[5]);  // (B, T)
      DistillTermsOptions options;
      const double alpha = std::stod(argv[6]);
      options.temperature = std::stod(argv[7]);
      options.reverse = std::string(argv[8]) == "reverse_kl";
      auto terms = summed_distill_terms(student, teacher, batch, Precision::kFp32, torch::kCPU,
                                        std::stoll(argv[9]), options);  // (2)
      const double t2 = options.temperature * options.temperature;
      ((1 - alpha) * terms[0] + alpha * t2 * terms[1]).backward();
      NamedTensors out;
      for (const auto& item : student->named_parameters())
        out.emplace_back("grad." + item.key(), item.value().grad());
      write_safetensors(argv[10], out);
      std::cout
          << nlohmann::json{{"ce", terms[0].item<double>()}, {"kl", terms[1].item<double>()}}.dump()
          << std::endl;
      return 0;
    }
    if (verb == "resave" && (argc == 4 || argc == 5)) {
      const int64_t max_shard_bytes = argc == 5 ? std::stoll(argv[4]) : kDefaultMaxShardBytes;
      save_hf_model(*load_causal_lm(argv[2]), argv[3], /*tokenizer=*/nullptr, max_shard_bytes);
      return 0;
    }
    if (verb == "greedy" && (argc == 5 || argc == 6)) {
      CausalLM model = load_causal_lm(argv[2]);
      GenerateOptions options;
      options.temperature = 0;
      options.max_new_tokens = std::stoll(argv[4]);
      const auto rows = read_ids(argv[3]);
      nlohmann::json out = nlohmann::json::array();
      if (argc == 5) {
        for (const auto& row : rows) out.push_back(generate(model, row, options));
      } else {
        const auto batch_size = static_cast<std::size_t>(std::stoll(argv[5]));
        for (std::size_t first = 0; first < rows.size(); first += batch_size) {
          const std::vector<std::vector<int64_t>> batch(
              rows.begin() + first, rows.begin() + std::min(rows.size(), first + batch_size));
          for (const auto& produced : generate_batch(model, batch, options))
            out.push_back(produced);
        }
      }
      std::cout << out.dump() << std::endl;
      return 0;
    }
  } catch (const Error& e) {
    std::cerr << e.what() << std::endl;
    return e.exit_code();
  }
  std::cerr << "usage: gpt2_probe logits MODEL_DIR IDS_JSON OUT | resave MODEL_DIR OUT_DIR "
               "[MAX_SHARD_BYTES] | greedy MODEL_DIR IDS_JSON N [BATCH_SIZE] | lora-grads "
               "MODEL_DIR ADAPTER_DIR "
               "IDS_JSON OUT | distill STUDENT TEACHER IDS_JSON TARGETS_JSON ALPHA TEMPERATURE "
               "kl|reverse_kl CHUNK OUT"
            << std::endl;
  return 2;
}
