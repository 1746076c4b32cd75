// Adding domain tokens to a model (`lmtune tokenizer extend`): the tokens join its tokenizer as
// added tokens, and its token embedding (and an untied output head) gains one row per new id,
// each the mean of the old rows. Reads the source directory only; writes a new one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lmtune {

struct VocabExtension {
  std::vector<std::string> added;    // the tokens added, in order; their ids follow first_id
  std::vector<std::string> present;  // tokens the tokenizer already encodes as one token
  int64_t first_id = 0;              // the id of added[0]: the tokenizer's size before
  int64_t old_vocab = 0;             // config.json's vocab_size before and after
  int64_t new_vocab = 0;
};

// The tokens of a --tokens file: one per line, exactly as written (a leading space is part of
// the token); blank lines are skipped. InputError for an unreadable file or a line that is not
// UTF-8.
std::vector<std::string> read_token_list(const std::filesystem::path& file);

// What adding `tokens` to the model in `model_dir` takes, read and checked without writing
// anything: the tokens to add (those the tokenizer does not already encode as one token), their
// first id, and config.json's vocab_size before and after. InputError for a tokenizer.model-only
// tokenizer, a model without a token embedding of vocab_size rows, or a broken file.
VocabExtension plan_vocabulary_extension(const std::filesystem::path& model_dir,
                                         const std::vector<std::string>& tokens);

// Writes the model in `model_dir` with the planned tokens added into `out` (new or empty): its
// tokenizer (tokenizer.json's added_tokens, or for GPT-2's vocab.json + merges.txt
// tokenizer_config.json's added_tokens_decoder, as transformers keeps them), config.json with the
// new vocab_size, and the weights with the grown rows (sharded as transformers shards them). The
// result is loaded back (tokenizer and model) before it returns.
void write_vocabulary_extension(const std::filesystem::path& model_dir,
                                const VocabExtension& extension, const std::filesystem::path& out);

}  // namespace lmtune
