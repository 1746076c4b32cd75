#include "lmtune/infer/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "lmtune/io/json_file.h"

namespace lmtune {
namespace {

// Picks the next token from the last position's logits (V).
int64_t pick_token(torch::Tensor logits, const GenerateOptions& options, at::Generator& generator) {
  if (options.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits.to(torch::kFloat32) / options.temperature;
  if (options.top_k > 0 && options.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(options.top_k)).min();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  if (options.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    auto cumulative = sorted.softmax(0).cumsum(0);
    // Keep the smallest prefix whose probability reaches top_p (always at least one token).
    auto drop_sorted = (cumulative - sorted.softmax(0)) >= options.top_p;
    logits = logits.index_put({order.masked_select(drop_sorted)}, torch::tensor(-INFINITY));
  }
  auto probs = logits.softmax(0).to(torch::kCPU);
  return torch::multinomial(probs, /*num_samples=*/1, /*replacement=*/false, generator)
      .item<int64_t>();
}

}  // namespace

std::vector<int64_t> end_of_sequence_ids(const std::filesystem::path& model_dir,
                                         const ModelSpec& spec,
                                         std::optional<int64_t> tokenizer_eos) {
  std::vector<int64_t> ids = spec.eos_token_ids;
  auto add = [&](int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  const auto file = model_dir / "generation_config.json";
  const auto config = std::filesystem::exists(file)
                          ? read_json_file(file, "generation_config.json", /*object=*/true)
                          : nlohmann::json::object();
  if (config.contains("eos_token_id")) {
    const auto& eos = config["eos_token_id"];
    if (eos.is_number_integer()) add(eos.get<int64_t>());
    if (eos.is_array())
      for (const auto& id : eos)
        if (id.is_number_integer()) add(id.get<int64_t>());
  }
  if (tokenizer_eos) add(*tokenizer_eos);
  return ids;
}

std::vector<int64_t> prompt_ids(const Tokenizer& tokenizer, std::string_view text) {
  std::vector<int64_t> ids = tokenizer.framing().prefix;
  const std::vector<int64_t> encoded = tokenizer.encode(text);
  ids.insert(ids.end(), encoded.begin(), encoded.end());
  return ids;
}

std::string continuation_text(const Tokenizer& tokenizer, std::vector<int64_t> produced,
                              const std::vector<int64_t>& stop_ids) {
  if (!produced.empty() &&
      std::find(stop_ids.begin(), stop_ids.end(), produced.back()) != stop_ids.end())
    produced.pop_back();
  return valid_utf8(tokenizer.decode(produced));
}

std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options) {
  TORCH_CHECK(!prompt.empty(), "generate needs at least one prompt token");
  torch::NoGradGuard no_grad;
  model->eval();
  const auto device = model->output_weight().device();
  const int64_t context = model->spec().context;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);

  std::vector<int64_t> tokens = prompt;
  std::vector<int64_t> produced;
  KVCache cache;
  // With the cache, each step feeds only the tokens the model has not seen yet.
  std::size_t fed = 0;
  while (static_cast<int64_t>(produced.size()) < options.max_new_tokens &&
         static_cast<int64_t>(tokens.size()) < context) {
    std::size_t start = options.use_cache ? fed : 0;
    auto input =
        torch::tensor(std::vector<int64_t>(tokens.begin() + start, tokens.end()), torch::kLong)
            .unsqueeze(0)
            .to(device);                                                        // (1, T)
    auto logits = model->forward(input, options.use_cache ? &cache : nullptr);  // (1, T, V)
    fed = tokens.size();
    int64_t next = pick_token(logits[0][-1], options, generator);
    tokens.push_back(next);
    produced.push_back(next);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end())
      break;
  }
  return produced;
}

}  // namespace lmtune
