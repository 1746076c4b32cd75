// Unit tests of the tokenizers: GPT-2's reference vectors, tokenizer.json forms, special tokens,
// byte round trips, broken files, saving, SentencePiece through its own trainer, and valid_utf8
// against Python's and ICU's UTF-8 decoders.
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unicode/unistr.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::Tokenizer;
using nlohmann::json;

namespace {

const fs::path kShared = LMTUNE_SHARED_DIR;
const fs::path kGpt2Dir = kShared / "data" / "gpt2-tokenizer";

// The whole file; a missing one (../shared not beside the checkout) fails the test, rather than
// give it an empty text to pass on.
std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot read it (tests need this file)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// GPT-2's tokenizer, loaded once for the whole suite.
const Tokenizer& gpt2() {
  static const auto tokenizer = lmtune::load_tokenizer(kGpt2Dir);
  return *tokenizer;
}

class TokenizerTest : public TempDirTest {
 protected:
  fs::path write(const std::string& name, const std::string& text) {
    fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  // A copy of GPT-2's vocab.json and merges.txt in `sub`, with merges.txt as given.
  fs::path gpt2_copy(const std::string& sub, const std::string& merges) {
    write(sub + "/vocab.json", read(kGpt2Dir / "vocab.json"));
    write(sub + "/merges.txt", merges);
    return dir_ / sub;
  }

  // The InputError message loading `dir` gives; fails the test when loading succeeds.
  std::string load_error(const fs::path& dir) {
    try {
      lmtune::load_tokenizer(dir);
    } catch (const lmtune::InputError& e) {
      EXPECT_EQ(e.exit_code(), lmtune::kExitBadInput);
      return e.what();
    }
    ADD_FAILURE() << "loading " << dir << " succeeded";
    return "";
  }
};

// The first `count` rules of GPT-2's merges.txt, after its "#version" line.
std::vector<std::string> gpt2_merges(std::size_t count) {
  std::istringstream in(read(kGpt2Dir / "merges.txt"));
  std::vector<std::string> rules;
  std::string line;
  std::getline(in, line);
  while (rules.size() < count && std::getline(in, line)) rules.push_back(line);
  return rules;
}

TEST_F(TokenizerTest, MatchesGpt2ReferenceVectors) {
  std::istringstream lines(read(kGpt2Dir / "vectors.jsonl"));
  std::string line;
  int cases = 0;
  while (std::getline(lines, line)) {
    json vector = json::parse(line);
    std::string text = vector["text"];
    auto expected = vector["ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(gpt2().encode(text), expected) << text;
    EXPECT_EQ(gpt2().decode(expected), text);
    ++cases;
  }
  EXPECT_GE(cases, 50);
}

TEST_F(TokenizerTest, EndOfTextIsOneTokenAnywhere) {
  EXPECT_EQ(gpt2().eos_id(), 50256);
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().encode("a<|endoftext|>b"), (std::vector<int64_t>{64, 50256, 65}));
  EXPECT_EQ(gpt2().encode("<|endoftext|><|endoftext|>"), (std::vector<int64_t>{50256, 50256}));
  // The text before a special token ends there: its trailing space is not left to a next word.
  EXPECT_EQ(gpt2().encode("Hi <|endoftext|>"), (std::vector<int64_t>{17250, 220, 50256}));
  auto partial = gpt2().encode("<|endoftext|");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 50256), 0);
  EXPECT_EQ(gpt2().decode({50256}), "<|endoftext|>");
}

TEST_F(TokenizerTest, DecodeRoundTripsAnyBytes) {
  for (int byte = 0; byte < 256; ++byte) {
    std::string text(1, static_cast<char>(byte));
    auto ids = gpt2().encode(text);
    EXPECT_EQ(ids.size(), 1u) << byte;
    EXPECT_EQ(gpt2().decode(ids), text) << byte;
  }
  // Truncated, overlong, surrogate, out-of-range and stray continuation bytes among valid text.
  std::string broken =
      "ok \xE6\x97 x\xC0\x80y \xED\xA0\x80 \xF5\x80 \x80\xBF caf\xC3\xA9 \xF0\x9F\xA4";
  EXPECT_EQ(gpt2().decode(gpt2().encode(broken)), broken);
  std::mt19937 rng(7);
  std::string noise(20000, '\0');
  for (char& c : noise) c = static_cast<char>(rng() & 0xFF);
  EXPECT_EQ(gpt2().decode(gpt2().encode(noise)), noise);
}

TEST(ValidUtf8, ReplacesEachMaximalIllFormedSubpartAsPythonsDecoderDoes) {
  // Expected values: bytes.decode("utf-8", "replace") in CPython 3.11.
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"abc", "abc"},
      {"\xE2\x82\xAC", "\xE2\x82\xAC"},  // the euro sign, whole
      {"\xE2\x82", r},                   // cut short at the end
      {"\xE2\x82"
       "A",
       r + "A"},                            // cut short before ASCII
      {"\xE0\x80\xAF", r + r + r},          // overlong: E0 takes A0..BF next
      {"\xED\xA0\x80", r + r + r},          // a surrogate
      {"\xF0\x90\x80", r},                  // four-byte sequence cut short
      {"\xF4\x90\x80\x80", r + r + r + r},  // past U+10FFFF
      {"\xC0\xAF", r + r},                  // C0 never starts a sequence
      {"\xFF\xFE", r + r},
      {"\xF0\x9F\x98\x80x\x80", "\xF0\x9F\x98\x80x" + r},
      {"\xC3", r},
  };
  for (const auto& [bytes, text] : cases) EXPECT_EQ(lmtune::valid_utf8(bytes), text) << bytes;
}

TEST(ValidUtf8, AgreesWithIcusDecoderOnRandomBytes) {
  // ICU substitutes U+FFFD per maximal subpart too (UTF-8 to UTF-16 with substitution): an
  // independent decoder to compare against, on bytes weighted towards UTF-8's lead and
  // continuation ranges so that every kind of break occurs.
  std::mt19937 rng(11);
  const unsigned char alphabet[] = {'a',  ' ',  0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2,
                                    0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
  for (int trial = 0; trial < 20000; ++trial) {
    std::string bytes(rng() % 12, '\0');
    for (char& c : bytes) c = static_cast<char>(alphabet[rng() % sizeof(alphabet)]);
    std::string expected;
    icu::UnicodeString::fromUTF8(bytes).toUTF8String(expected);
    ASSERT_EQ(lmtune::valid_utf8(bytes), expected) << testing::PrintToString(bytes);
  }
}

TEST_F(TokenizerTest, LongRunsEncodeQuickly) {
  // One pre-token each: a quadratic merge would take minutes here.
  std::string spaces(1 << 20, ' ');
  EXPECT_EQ(gpt2().encode(spaces), std::vector<int64_t>(spaces.size(), 220));  // no 'ĠĠ' in GPT-2
  for (const std::string& run : {std::string(1 << 18, '='), std::string(1 << 18, 'a')}) {
    auto ids = gpt2().encode(run);
    EXPECT_LE(ids.size(), run.size() / 4);
    EXPECT_EQ(gpt2().decode(ids), run);
  }
}

TEST_F(TokenizerTest, EncodesFromSeveralThreadsAtOnce) {
  std::string text = read(kShared / "data" / "tinyshakespeare.txt").substr(0, 200000);
  auto expected = gpt2().encode(text);
  auto tokenizer = lmtune::load_tokenizer(kGpt2Dir);  // its cache starts empty
  std::vector<std::vector<int64_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) threads.emplace_back([&] { result = tokenizer->encode(text); });
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result, expected);
}

TEST_F(TokenizerTest, DecodeRejectsUnknownIds) {
  EXPECT_THROW(gpt2().decode({50257}), lmtune::Error);
  EXPECT_THROW(gpt2().decode({-1}), lmtune::Error);
}

TEST_F(TokenizerTest, TokenizerJsonMergeSpellingsMatchMergesTxt) {
  // A shortened merge list makes the three forms differ from full GPT-2, so the test shows
  // that each form is read as written, rule by rule.
  auto rules = gpt2_merges(3000);
  std::string merges_txt = "#version: 0.2\n";
  json as_strings = json::array(), as_pairs = json::array();
  for (const auto& rule : rules) {
    merges_txt += rule + "\n";
    as_strings.push_back(rule);
    auto space = rule.find(' ');
    as_pairs.push_back({rule.substr(0, space), rule.substr(space + 1)});
  }
  auto reference = lmtune::load_tokenizer(gpt2_copy("txt", merges_txt));
  json vocab = json::parse(read(kGpt2Dir / "vocab.json"));
  json added = json::array({{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}},
                            {{"id", 50257}, {"content", "<|x|>"}, {"special", true}},
                            {{"id", 50258}, {"content", "<|x|><|y|>"}, {"special", true}}});
  std::string text =
      read(kShared / "data" / "tinyshakespeare.txt").substr(0, 20000) + " naïve 日本語 🤖";
  for (const json& merges : {as_strings, as_pairs}) {
    json tree = {{"version", "1.0"},
                 {"added_tokens", added},
                 {"normalizer", nullptr},
                 {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                 {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
    fs::path sub = merges[0].is_string() ? "strings" : "pairs";
    write(sub / "tokenizer.json", tree.dump());
    auto tokenizer = lmtune::load_tokenizer(dir_ / sub);
    EXPECT_EQ(tokenizer->encode(text), reference->encode(text)) << sub;
    EXPECT_NE(tokenizer->encode(text), gpt2().encode(text));
    EXPECT_EQ(tokenizer->vocab_size(), 50259);
    EXPECT_EQ(tokenizer->eos_id(), 50256);
    // Where two added tokens start at the same place, the longer one wins.
    EXPECT_EQ(tokenizer->encode("a<|x|><|y|><|x|>"), (std::vector<int64_t>{64, 50258, 50257}));
    EXPECT_EQ(tokenizer->decode({50258}), "<|x|><|y|>");
  }
}

TEST_F(TokenizerTest, SaveWritesLoadableFiles) {
  fs::path source = gpt2_copy("source", read(kGpt2Dir / "merges.txt"));
  auto tokenizer = lmtune::load_tokenizer(source);
  tokenizer->save(dir_ / "saved");
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(dir_ / "saved" / name)) << name;
  json config = json::parse(read(dir_ / "saved" / "tokenizer_config.json"));
  EXPECT_EQ(config["tokenizer_class"], "GPT2Tokenizer");
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  std::string text = "Saved <|endoftext|> and loaded again.";
  EXPECT_EQ(lmtune::load_tokenizer(dir_ / "saved")->encode(text), tokenizer->encode(text));
  // Saving into the directory it came from leaves the files whole.
  auto size = fs::file_size(source / "vocab.json");
  tokenizer->save(source);
  EXPECT_EQ(fs::file_size(source / "vocab.json"), size);
}

TEST_F(TokenizerTest, MissingFilesNameWhatIsMissing) {
  EXPECT_NE(load_error(dir_ / "absent").find("not a directory"), std::string::npos);
  EXPECT_NE(load_error(dir_).find("no tokenizer files"), std::string::npos);
  write("half/vocab.json", read(kGpt2Dir / "vocab.json"));
  EXPECT_NE(load_error(dir_ / "half").find("merges.txt: missing"), std::string::npos);
}

TEST_F(TokenizerTest, BrokenGpt2FilesNameFileAndLine) {
  std::string merges = "#version: 0.2\n" + gpt2_merges(2)[0] + "\n" + gpt2_merges(2)[1] + "\n";
  std::string error = load_error(gpt2_copy("malformed", merges + "Ġt h e\n"));
  EXPECT_NE(error.find("merges.txt: line 4: expected two tokens"), std::string::npos) << error;
  error = load_error(gpt2_copy("unknown", merges + "Ġt zzzzzz\n"));
  EXPECT_NE(error.find("merges.txt: line 4: token 'zzzzzz' is not in vocab.json"),
            std::string::npos)
      << error;
  write("garbled/vocab.json", read(kGpt2Dir / "vocab.json").substr(0, 5000));
  write("garbled/merges.txt", merges);
  error = load_error(dir_ / "garbled");
  EXPECT_NE(error.find("vocab.json: not valid JSON"), std::string::npos) << error;
  write("badid/vocab.json", R"({"a": "one"})");
  write("badid/merges.txt", "");
  error = load_error(dir_ / "badid");
  EXPECT_NE(error.find("vocab.json: token 'a' has id \"one\""), std::string::npos) << error;
  write("nobytes/vocab.json", R"({"a": 0, "b": 1})");
  write("nobytes/merges.txt", "");
  error = load_error(dir_ / "nobytes");
  EXPECT_NE(error.find("needs a token for every byte"), std::string::npos) << error;
}

TEST_F(TokenizerTest, BrokenTokenizerJsonNamesFileAndKey) {
  json tree = {{"pre_tokenizer", {{"type", "ByteLevel"}}},
               {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", {"a b"}}}}};
  write("truncated/tokenizer.json", tree.dump().substr(0, 40));
  std::string error = load_error(dir_ / "truncated");
  EXPECT_NE(error.find("tokenizer.json: not valid JSON"), std::string::npos) << error;
  write("merge/tokenizer.json", tree.dump());
  error = load_error(dir_ / "merge");
  EXPECT_NE(error.find("model.merges[0]: the merge of 'a' and 'b' ('ab') is not in model.vocab"),
            std::string::npos)
      << error;
  tree["model"]["type"] = "WordPiece";
  write("wordpiece/tokenizer.json", tree.dump());
  error = load_error(dir_ / "wordpiece");
  EXPECT_NE(error.find("model.type \"WordPiece\" is not BPE"), std::string::npos) << error;
  tree["model"]["type"] = 7;
  write("typed/tokenizer.json", tree.dump());
  EXPECT_NE(load_error(dir_ / "typed").find("model.type 7"), std::string::npos);
}

TEST_F(TokenizerTest, SentencePieceMatchesItsReferenceLibrary) {
  write("corpus.txt", read(kShared / "data" / "tinyshakespeare.txt").substr(0, 100000));
  fs::path prefix = dir_ / "sp" / "tokenizer";
  fs::create_directories(prefix.parent_path());
  auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir_ / "corpus.txt").string() + " --model_prefix=" + prefix.string() +
      " --vocab_size=300 --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  sentencepiece::SentencePieceProcessor reference;
  ASSERT_TRUE(reference.Load((dir_ / "sp" / "tokenizer.model").string()).ok());

  auto tokenizer = lmtune::load_tokenizer(dir_ / "sp");
  std::string text = "First Citizen: we are accounted poor citizens, the patricians good.";
  std::vector<int> expected = reference.EncodeAsIds(text);
  EXPECT_EQ(tokenizer->encode(text), std::vector<int64_t>(expected.begin(), expected.end()));
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
  EXPECT_EQ(tokenizer->vocab_size(), 300);
  EXPECT_EQ(tokenizer->eos_id(), reference.eos_id());
  EXPECT_EQ(tokenizer->encode("</s>"), std::vector<int64_t>{reference.eos_id()});
  tokenizer->save(dir_ / "saved");
  EXPECT_EQ(lmtune::load_tokenizer(dir_ / "saved")->encode(text), tokenizer->encode(text));
  write("broken/tokenizer.model", "not a protobuf");
  EXPECT_NE(load_error(dir_ / "broken").find("not a SentencePiece model"), std::string::npos);
}

}  // namespace
