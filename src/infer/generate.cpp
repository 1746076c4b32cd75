#include "lmtune/infer/generate.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <nlohmann/json.hpp>

#include "lmtune/io/json_file.h"

namespace lmtune {
namespace {

// Samples a token from one row's last-position logits (V) as temperature, top-k and top-p say.
int64_t sample_token(torch::Tensor logits, const GenerateOptions& options,
                     at::Generator& generator) {
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

// The next token of each row from the last positions' logits (B, V): the most likely one when
// greedy (one argmax and one copy to the host for the whole batch), else a draw from the row's
// generator.
std::vector<int64_t> pick_tokens(const torch::Tensor& logits, const GenerateOptions& options,
                                 std::vector<at::Generator>& generators) {
  const int64_t B = logits.size(0);
  std::vector<int64_t> next(B);
  if (options.temperature <= 0) {
    auto ids = logits.argmax(/*dim=*/-1).to(torch::kCPU);  // (B)
    std::copy_n(ids.data_ptr<int64_t>(), B, next.begin());
    return next;
  }
  for (int64_t b = 0; b < B; ++b) next[b] = sample_token(logits[b], options, generators[b]);
  return next;
}

// The logits (B, V) of the last positions' hidden states (B, C). On the CPU outside autocast, the
// product runs as W·hᵀ, which MKL's sgemm does markedly faster than h·Wᵀ for a few rows
// (docs/benchmarks.md#generation); the output head is most of a decode step's work.
torch::Tensor last_position_logits(const CausalLM& model, const torch::Tensor& hidden) {
  if (!hidden.device().is_cpu() || at::autocast::is_autocast_enabled(c10::DeviceType::CPU))
    return model->output_logits(hidden);
  return torch::mm(model->output_weight(), hidden.t()).t();  // (V, C) x (C, B) -> (B, V)
}

bool is_stop_id(const std::vector<int64_t>& stop_ids, int64_t token) {
  return std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
}

at::Generator prompt_generator(const GenerateOptions& options) {
  return at::make_generator<at::CPUGeneratorImpl>(options.seed);
}

// The reference decoding of one prompt (use_cache false): the whole sequence through the model
// at every step.
std::vector<int64_t> generate_without_cache(const CausalLM& model,
                                            const std::vector<int64_t>& prompt,
                                            const GenerateOptions& options,
                                            const std::function<void(int64_t)>& on_token) {
  const auto device = model->output_weight().device();
  std::vector<at::Generator> generator{prompt_generator(options)};
  std::vector<int64_t> tokens = prompt, produced;
  while (static_cast<int64_t>(produced.size()) < options.max_new_tokens &&
         static_cast<int64_t>(tokens.size()) < model->spec().context) {
    auto input = torch::tensor(tokens, torch::kLong).unsqueeze(0).to(device);  // (1, T)
    auto logits = model->forward(input);                                       // (1, T, V)
    const int64_t next = pick_tokens(logits.select(1, -1), options, generator)[0];
    tokens.push_back(next);
    produced.push_back(next);
    if (on_token) on_token(next);
    if (is_stop_id(options.stop_ids, next)) break;
  }
  return produced;
}

// The length of `bytes` without a character cut short at its end: a lead byte followed by fewer
// continuation bytes than it announces, which the next token may complete. Anything else
// (complete, or ill-formed whatever follows) decodes the same whatever comes next.
std::size_t without_cut_character(std::string_view bytes) {
  const std::size_t n = bytes.size();
  for (std::size_t back = 1; back <= std::min<std::size_t>(3, n); ++back) {
    const auto byte = static_cast<unsigned char>(bytes[n - back]);
    if ((byte & 0xC0) == 0x80) continue;  // a continuation byte
    const std::size_t announced = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return back < announced ? n - back : n;
  }
  return n;
}

// The prompts of a batch still being decoded, with the KV cache they share. Row b of the cache
// holds prompts[index[b]], left-padded by padding[b] slots.
struct DecodingBatch {
  KVCache cache;
  std::vector<std::size_t> index;  // the rows' prompts
  std::vector<int64_t> padding;    // slots of left padding per row
  std::vector<int64_t> length;     // tokens per row so far: prompt and produced
  std::vector<at::Generator> generators;

  void set_padding(torch::Device device) {
    const bool padded =
        std::any_of(padding.begin(), padding.end(), [](int64_t slots) { return slots > 0; });
    cache.padding = padded ? torch::tensor(padding, torch::kLong).to(device) : torch::Tensor();
  }

  // Keeps rows `keep` (ascending) and drops the slots that are padding in each of them.
  void keep_rows(const std::vector<int64_t>& keep, torch::Device device) {
    const int64_t shift = std::transform_reduce(
        keep.begin(), keep.end(), std::numeric_limits<int64_t>::max(),
        [](int64_t a, int64_t b) { return std::min(a, b); }, [&](int64_t b) { return padding[b]; });
    auto rows = torch::tensor(keep, torch::kLong).to(device);
    auto select = [&](torch::Tensor& reserved) {  // (B, H_kv, slots, D) -> (B', ...)
      reserved = reserved.narrow(2, shift, reserved.size(2) - shift).index_select(0, rows);
    };
    for (auto& keys : cache.keys) select(keys);
    for (auto& values : cache.values) select(values);
    cache.filled -= shift;
    auto keep_of = [&](auto& values) {
      std::remove_reference_t<decltype(values)> kept;
      for (int64_t b : keep) kept.push_back(std::move(values[b]));
      values = std::move(kept);
    };
    keep_of(index);
    keep_of(padding);
    keep_of(length);
    if (!generators.empty()) keep_of(generators);
    for (auto& slots : padding) slots -= shift;
    set_padding(device);
  }
};

}  // namespace

ContinuationStream::ContinuationStream(const Tokenizer& tokenizer, std::vector<int64_t> stop_ids)
    : tokenizer_(tokenizer), stop_ids_(std::move(stop_ids)) {}

std::string ContinuationStream::add(int64_t token) {
  if (is_stop_id(stop_ids_, token)) return {};
  tokens_.push_back(token);
  const std::string bytes = tokenizer_.decode(tokens_);
  std::string text = valid_utf8(std::string_view(bytes).substr(0, without_cut_character(bytes)));
  constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  while (text.size() >= kReplacement.size() &&
         text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
    text.resize(text.size() - kReplacement.size());
  // Only text that extends what was returned is final (decoding more ids appends to the text).
  if (text.size() <= emitted_.size() || text.compare(0, emitted_.size(), emitted_) != 0) return {};
  std::string fresh = text.substr(emitted_.size());
  emitted_ = std::move(text);
  return fresh;
}

std::string ContinuationStream::finish() {
  const std::string text = continuation_text(tokenizer_, tokens_, stop_ids_);
  return text.compare(0, emitted_.size(), emitted_) == 0 ? text.substr(emitted_.size()) : text;
}

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
  if (!produced.empty() && is_stop_id(stop_ids, produced.back())) produced.pop_back();
  return valid_utf8(tokenizer.decode(produced));
}

std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token) {
  TokenCallback each;
  if (on_token) each = [&](std::size_t, int64_t token) { on_token(token); };
  return generate_batch(model, {prompt}, options, each)[0];
}

std::vector<std::vector<int64_t>> generate_batch(const CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerateOptions& options,
                                                 const TokenCallback& on_token) {
  for (const auto& prompt : prompts)
    TORCH_CHECK(!prompt.empty(), "generate needs at least one prompt token");
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<std::vector<int64_t>> produced(prompts.size());
  if (!options.use_cache) {
    for (std::size_t i = 0; i < prompts.size(); ++i)
      produced[i] = generate_without_cache(model, prompts[i], options, [&](int64_t token) {
        if (on_token) on_token(i, token);
      });
    return produced;
  }
  const auto device = model->output_weight().device();
  const int64_t context = model->spec().context;

  DecodingBatch batch;
  int64_t longest = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto length = static_cast<int64_t>(prompts[i].size());
    if (options.max_new_tokens <= 0 || length >= context) continue;  // nothing to produce
    batch.index.push_back(i);
    batch.length.push_back(length);
    longest = std::max(longest, length);
    if (options.temperature > 0) batch.generators.push_back(prompt_generator(options));
  }
  if (batch.index.empty()) return produced;
  // The prompts left-padded to the longest (padding id 0: never attended to).
  const auto B = static_cast<int64_t>(batch.index.size());
  std::vector<int64_t> flat(B * longest, 0);
  for (int64_t b = 0; b < B; ++b) {
    const auto& prompt = prompts[batch.index[b]];
    batch.padding.push_back(longest - batch.length[b]);
    std::copy(prompt.begin(), prompt.end(), flat.begin() + (b + 1) * longest - prompt.size());
  }
  batch.set_padding(device);
  batch.cache.reserve = std::min(longest + options.max_new_tokens, context);
  auto input = torch::tensor(flat, torch::kLong).view({B, longest}).to(device);  // (B, T)

  while (true) {
    auto hidden = model->hidden_states(input, &batch.cache);                  // (B, T, C)
    auto logits = last_position_logits(model, hidden.select(/*dim=*/1, -1));  // (B, V)
    const std::vector<int64_t> next = pick_tokens(logits, options, batch.generators);
    std::vector<int64_t> keep;  // rows that go on
    for (std::size_t b = 0; b < next.size(); ++b) {
      auto& tokens = produced[batch.index[b]];
      tokens.push_back(next[b]);
      if (on_token) on_token(batch.index[b], next[b]);
      ++batch.length[b];
      const bool done = is_stop_id(options.stop_ids, next[b]) ||
                        static_cast<int64_t>(tokens.size()) >= options.max_new_tokens ||
                        batch.length[b] >= context;
      if (!done) keep.push_back(static_cast<int64_t>(b));
    }
    if (keep.empty()) break;
    if (keep.size() < next.size()) batch.keep_rows(keep, device);
    std::vector<int64_t> last;
    for (int64_t b : keep) last.push_back(next[b]);
    input = torch::tensor(last, torch::kLong).unsqueeze(1).to(device);  // (B, 1)
  }
  return produced;
}

}  // namespace lmtune
