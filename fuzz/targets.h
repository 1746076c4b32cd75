// Fuzz harnesses for every parser of user files: each writes its input where a user's file would
// be and calls the loader a user's command calls. A clean failure is lmtune::Error (one error
// line); anything else escaping a harness (another exception, a crash, a sanitizer report, a hang)
// is a bug. Shared by the libFuzzer binary and the corpus replay test, so the suite replays
// exactly what the fuzzer ran. Never writes outside its per-process temporary directory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lmtune::fuzz {

// One harness: returns 0 (libFuzzer's convention); lets through every exception but Error.
using FuzzFunction = int (*)(const uint8_t* data, std::size_t size);

struct FuzzTarget {
  std::string_view name;  // also the corpus folder: tests/fuzz/<name>/
  FuzzFunction run;
};

// Every target, in a fixed order.
const std::vector<FuzzTarget>& fuzz_targets();

// The target called `name`, or nullptr.
const FuzzTarget* find_fuzz_target(std::string_view name);

int fuzz_safetensors(const uint8_t* data, std::size_t size);
int fuzz_config_json(const uint8_t* data, std::size_t size);
int fuzz_config_yaml(const uint8_t* data, std::size_t size);
int fuzz_tokenizer_json(const uint8_t* data, std::size_t size);
int fuzz_vocab_merges(const uint8_t* data, std::size_t size);
int fuzz_trainer_state(const uint8_t* data, std::size_t size);
int fuzz_adapter_config(const uint8_t* data, std::size_t size);
int fuzz_token_cache(const uint8_t* data, std::size_t size);
int fuzz_data_lines(const uint8_t* data, std::size_t size);

}  // namespace lmtune::fuzz
