// Unit tests of tokenizer.json pipelines beyond GPT-2's: SentencePiece-style BPE with byte
// fallback, Llama 3's Split pattern with NFC and ignore_merges, added-token flags, decoders and
// post-processor framing. Expected ids and texts are those the `tokenizers` package (0.23) gives
// for the same files; tests/e2e/test_tokenizer_json.py compares encodings with it directly.
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>
#include <nlohmann/json.hpp>

#include "lmtune/core/errors.h"
#include "lmtune/io/tokenizer.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::Tokenizer;
using nlohmann::json;
using Ids = std::vector<int64_t>;

namespace {

const fs::path kSharedDir = LMTUNE_SHARED_DIR;
const fs::path kGpt2Files = kSharedDir / "data" / "gpt2-tokenizer";

// Llama 3's pre-tokenisation pattern, as its tokenizer.json writes it.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The whole file; a missing one (../shared not beside the checkout) fails the test, rather than
// give it an empty text to pass on.
std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot read it (tests need this file)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

json added_token(int64_t id, const std::string& content, json flags = json::object()) {
  json token = {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  token.update(flags);
  return token;
}

json template_special(const std::string& name, int64_t id) {
  return {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
}

// A SentencePiece-style BPE as Llama 2's: <unk>, <s>, </s>, the byte tokens <0x00>..<0xFF> (ids
// 3..258), "▁" (259) and the letters of "hello world" (260..266), merged up to "▁hello" (271)
// and "▁world" (276); the template puts <s> before a text and </s> after it.
json sentencepiece_tree(bool legacy) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int byte = 0; byte < 256; ++byte) {
    std::snprintf(name, sizeof(name), "<0x%02X>", byte);
    vocab[name] = vocab.size();
  }
  for (const char* piece : {"▁", "h", "e", "l", "o", "w", "r", "d"}) vocab[piece] = vocab.size();
  json merges = json::array({{"▁", "h"},
                             {"e", "l"},
                             {"▁h", "el"},
                             {"l", "o"},
                             {"▁hel", "lo"},
                             {"▁", "w"},
                             {"o", "r"},
                             {"▁w", "or"},
                             {"l", "d"},
                             {"▁wor", "ld"}});
  for (const auto& merge : merges) {
    std::string merged = merge[0].get<std::string>() + merge[1].get<std::string>();
    if (!vocab.contains(merged)) vocab[merged] = vocab.size();
  }
  json single = {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                 {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}};
  json tree = {
      {"added_tokens", {added_token(0, "<unk>"), added_token(1, "<s>"), added_token(2, "</s>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", single},
        {"special_tokens",
         {{"<s>", template_special("<s>", 1)}, {"</s>", template_special("</s>", 2)}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merges}}}};
  if (legacy) {
    tree["normalizer"] = {
        {"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "▁"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}};
    tree["decoder"] = {{"type", "Sequence"},
                       {"decoders",
                        {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                         {{"type", "ByteFallback"}},
                         {{"type", "Fuse"}},
                         {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  } else {
    json metaspace = {
        {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", true}};
    tree["pre_tokenizer"] = metaspace;
    tree["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, metaspace}}};
  }
  return tree;
}

// GPT-2's vocabulary and merges behind Llama 3's pipeline: NFC, its Split pattern, ByteLevel
// without its own pattern, ignore_merges, and a template that starts each text with
// <|begin_of_text|> (50258). "ĠShakespearean" (50257) is a token no merge reaches.
json llama3_tree() {
  json vocab = json::parse(read_text(kGpt2Files / "vocab.json"));
  vocab["ĠShakespearean"] = 50257;
  json merges = json::array();
  std::istringstream lines(read_text(kGpt2Files / "merges.txt"));
  std::string line;
  std::getline(lines, line);  // #version
  while (std::getline(lines, line))
    if (!line.empty()) merges.push_back(line);
  json split = {{"type", "Split"},
                {"pattern", {{"Regex", kLlama3Pattern}}},
                {"behavior", "Isolated"},
                {"invert", false}};
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  json single = {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}};
  json bos_template = {
      {"type", "TemplateProcessing"},
      {"single", single},
      {"special_tokens", {{"<|begin_of_text|>", template_special("<|begin_of_text|>", 50258)}}}};
  return {
      {"added_tokens",
       {added_token(50258, "<|begin_of_text|>"), added_token(50259, "<|end_of_text|>")}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
      {"post_processor",
       {{"type", "Sequence"}, {"processors", {{{"type", "ByteLevel"}}, bos_template}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}}}};
}

class TokenizerJsonTest : public TempDirTest {
 protected:
  std::unique_ptr<Tokenizer> load(const std::string& name, const json& tree) {
    fs::create_directories(dir_ / name);
    std::ofstream(dir_ / name / "tokenizer.json") << tree.dump();
    return lmtune::load_tokenizer(dir_ / name);
  }

  // The InputError message loading `tree` gives; fails the test when loading succeeds.
  std::string load_error(const std::string& name, const json& tree) {
    try {
      load(name, tree);
    } catch (const lmtune::InputError& e) {
      EXPECT_EQ(e.exit_code(), lmtune::kExitBadInput);
      return e.what();
    }
    ADD_FAILURE() << "loading " << name << " succeeded";
    return "";
  }
};

struct Case {
  std::string text;
  Ids ids;
  std::string decoded;
};

TEST_F(TokenizerJsonTest, LegacySentencePieceStyleEncodesAndDecodesAsTokenizers) {
  auto tokenizer = load("legacy", sentencepiece_tree(/*legacy=*/true));
  const Case cases[] = {
      {"hello world", {271, 276}, "hello world"},
      {" hello  world ", {259, 271, 259, 276, 259}, " hello  world "},
      // é and 日本 are no tokens: their UTF-8 bytes are.
      {"héllo 日本", {267, 198, 172, 262, 270, 259, 233, 154, 168, 233, 159, 175}, "héllo 日本"},
      // The normalizer puts ▁ before every stretch between special tokens.
      {"<s>hello</s>world", {1, 271, 2, 276}, "<s> hello</s> world"},
      {"hello\tworld\n", {271, 12, 264, 273, 275, 13}, "hello\tworld\n"},
      {"xyz", {259, 123, 124, 125}, "xyz"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(tokenizer->encode(c.text), c.ids) << c.text;
    EXPECT_EQ(tokenizer->decode(c.ids), c.decoded) << c.text;
  }
  EXPECT_EQ(tokenizer->vocab_size(), 277);
}

TEST_F(TokenizerJsonTest, MetaspaceSentencePieceStyleEncodesAndDecodesAsTokenizers) {
  auto tokenizer = load("metaspace", sentencepiece_tree(/*legacy=*/false));
  const Case cases[] = {
      {"hello world", {271, 276}, "hello world"},
      // The first token's ▁ is taken for the one the pre-tokenizer put there.
      {" hello  world ", {271, 259, 276, 259}, "hello  world "},
      {"héllo 日本", {267, 198, 172, 262, 270, 259, 233, 154, 168, 233, 159, 175}, "héllo 日本"},
      // prepend_scheme "first": no ▁ before text that follows a special token.
      {"<s>hello</s>world", {1, 260, 268, 270, 2, 264, 273, 275}, "<s>hello</s>world"},
      {"hello\tworld\n", {271, 12, 264, 273, 275, 13}, "hello\tworld\n"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(tokenizer->encode(c.text), c.ids) << c.text;
    EXPECT_EQ(tokenizer->decode(c.ids), c.decoded) << c.text;
  }
}

TEST_F(TokenizerJsonTest, ByteFallbackThatIsNotUtf8DecodesToReplacementCharacters) {
  for (bool legacy : {true, false}) {
    auto tokenizer = load(legacy ? "legacy" : "metaspace", sentencepiece_tree(legacy));
    EXPECT_EQ(tokenizer->decode({234, 154, 168}), "痥");
    // A run of byte tokens that is not UTF-8 becomes one U+FFFD per byte, whole run long.
    EXPECT_EQ(tokenizer->decode({234, 154, 273}), "\uFFFD\uFFFDor");
    EXPECT_EQ(tokenizer->decode({258, 3, 268}), "\uFFFD\uFFFDel");
    EXPECT_EQ(tokenizer->decode({1, 268, 2}), "<s>el</s>");
    EXPECT_EQ(tokenizer->decode({271, 268, 271}), "helloel hello");
    EXPECT_EQ(tokenizer->decode({0, 0, 259}), "<unk><unk> ");
  }
}

TEST_F(TokenizerJsonTest, SentencePieceStyleRoundTripsText) {
  auto tokenizer = load("legacy", sentencepiece_tree(/*legacy=*/true));
  for (const std::string text : {"hello, wörld!", "Привет мир  日本語\n\ttabs",
                                 "emoji 🤖👩‍💻 and digits 0123", "x"}) {
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
  }
  // Bytes that are not UTF-8 still encode, as their byte tokens, and decode to U+FFFD.
  EXPECT_EQ(tokenizer->encode("\xFF"), (Ids{259, 258}));
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("h\xFF")), "h\uFFFD");
}

TEST_F(TokenizerJsonTest, TemplateFramesTextAndNamesEos) {
  auto tokenizer = load("legacy", sentencepiece_tree(/*legacy=*/true));
  EXPECT_EQ(tokenizer->framing().prefix, Ids{1});
  EXPECT_EQ(tokenizer->framing().suffix, Ids{2});
  // With no tokenizer_config.json, the EOS is the token the template ends a text with.
  EXPECT_EQ(tokenizer->eos_id(), 2);
}

TEST_F(TokenizerJsonTest, Llama3StyleSplitPatternNfcAndIgnoreMergesMatchTokenizers) {
  auto tokenizer = load("llama3", llama3_tree());
  const Case cases[] = {
      {"The Shakespearean year 2024: 1234567!\n\n\tdon'T",
       {464, 50257, 614, 220, 19004, 19, 25, 220, 10163, 29228, 22, 0, 628, 197, 9099, 6, 51},
       "The Shakespearean year 2024: 1234567!\n\n\tdon'T"},
      // NFC composes e + U+0301 and maps the Angstrom sign to Å before BPE sees them.
      {"caf\u00e9 cafe\u0301 \u212b<|end_of_text|>",
       {66, 1878, 2634, 40304, 6184, 227, 50259},
       "café café Å<|end_of_text|>"},
      {"  \n\n  x", {220, 220, 628, 220, 2124}, "  \n\n  x"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(tokenizer->encode(c.text), c.ids) << c.text;
    EXPECT_EQ(tokenizer->decode(c.ids), c.decoded) << c.text;
  }
  EXPECT_EQ(tokenizer->framing().prefix, Ids{50258});
  EXPECT_TRUE(tokenizer->framing().suffix.empty());
  EXPECT_EQ(tokenizer->vocab_size(), 50260);
  std::string long_run = std::string(100000, ' ') + std::string(100000, '\n') + "end";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(long_run)), long_run);
}

// A character-level vocabulary without merges or an unknown token, and one added token "<x>"
// (32) with the flags given: characters outside the vocabulary are dropped, as in `tokenizers`.
json flagged_tree(json flags) {
  json vocab = json::object();
  std::string alphabet = " abcdefghijklmnopqrstuvwxyz.,!\t\n";
  for (char c : alphabet) vocab[std::string(1, c)] = vocab.size();
  return {{"added_tokens", {added_token(32, "<x>", flags)}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
}

TEST_F(TokenizerJsonTest, AddedTokenFlagsTakeWhiteSpaceAndWords) {
  const Ids a_b = {1, 0, 32, 0, 2};  // "a", " ", "<x>", " ", "b"
  auto plain = load("plain", flagged_tree(json::object()));
  EXPECT_EQ(plain->encode("a <x> b"), a_b);
  EXPECT_EQ(plain->encode("a<x>b"), (Ids{1, 32, 2}));
  auto lstrip = load("lstrip", flagged_tree({{"lstrip", true}}));
  EXPECT_EQ(lstrip->encode("a  \t<x>\n b"), (Ids{1, 32, 31, 0, 2}));
  EXPECT_EQ(lstrip->encode("a <x>  <x> b"), (Ids{1, 32, 32, 0, 2}));
  auto rstrip = load("rstrip", flagged_tree({{"rstrip", true}}));
  EXPECT_EQ(rstrip->encode("a  \t<x>\n b"), (Ids{1, 0, 0, 30, 32, 2}));
  auto both = load("both", flagged_tree({{"lstrip", true}, {"rstrip", true}}));
  EXPECT_EQ(both->encode("a <x>  <x> b"), (Ids{1, 32, 32, 2}));
  auto single_word = load("single_word", flagged_tree({{"single_word", true}}));
  EXPECT_EQ(single_word->encode("a <x> b"), a_b);
  EXPECT_EQ(single_word->encode("a,<x>.b"), (Ids{1, 28, 32, 27, 2}));
  EXPECT_EQ(single_word->encode("<x><x>"), (Ids{32, 32}));
  // Touching a word character (é and _ are), the token is ordinary text: '<' and '>' drop.
  EXPECT_EQ(single_word->encode("a<x>b"), (Ids{1, 24, 2}));
  EXPECT_EQ(single_word->encode("é<x>"), Ids{24});
  EXPECT_EQ(single_word->encode("_<x>"), Ids{24});
  // Without a decoder, tokens are joined by spaces.
  EXPECT_EQ(plain->decode({1, 32, 2}), "a <x> b");
}

TEST_F(TokenizerJsonTest, PostProcessorsFrameAsTheirTypesSay) {
  json tree = flagged_tree(json::object());
  tree["post_processor"] = {{"type", "RobertaProcessing"}, {"cls", {"a", 1}}, {"sep", {"b", 2}}};
  auto roberta = load("roberta", tree);
  EXPECT_EQ(roberta->framing().prefix, Ids{1});
  EXPECT_EQ(roberta->framing().suffix, Ids{2});
  tree["post_processor"] = {{"type", "ByteLevel"}, {"trim_offsets", true}};
  auto byte_level = load("byte_level", tree);
  EXPECT_TRUE(byte_level->framing().prefix.empty() && byte_level->framing().suffix.empty());
  // Each processor of a sequence wraps what the ones before it produced.
  json bos = {{{"SpecialToken", {{"id", "a"}}}}, {{"Sequence", {{"id", "A"}}}}};
  json wrap = {{{"SpecialToken", {{"id", "c"}}}},
               {{"Sequence", {{"id", "A"}}}},
               {{"SpecialToken", {{"id", "c"}}}}};
  json specials = {{"a", template_special("a", 1)}, {"c", template_special("c", 3)}};
  tree["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "TemplateProcessing"}, {"single", bos}, {"special_tokens", specials}},
        {{"type", "TemplateProcessing"}, {"single", wrap}, {"special_tokens", specials}}}}};
  auto nested = load("nested", tree);
  EXPECT_EQ(nested->framing().prefix, (Ids{3, 1}));
  EXPECT_EQ(nested->framing().suffix, Ids{3});
  tree["post_processor"]["processors"][1]["special_tokens"]["c"]["ids"] = {999};
  EXPECT_NE(load_error("unknown_id", tree).find("post_processor: it adds id 999"),
            std::string::npos);
}

TEST_F(TokenizerJsonTest, UnsupportedTokenizerJsonFallsBackToTokenizerModelBesideIt) {
  json unigram = {{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}};
  std::string error = load_error("alone", unigram);
  EXPECT_NE(error.find("tokenizer.json: model.type \"Unigram\" is not BPE"), std::string::npos)
      << error;
  fs::path corpus = dir_ / "corpus.txt";
  std::ofstream(corpus) << read_text(kSharedDir / "data" / "tinyshakespeare.txt").substr(0, 50000);
  fs::create_directories(dir_ / "beside");
  auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + corpus.string() + " --model_prefix=" + (dir_ / "beside" / "tokenizer").string() +
      " --vocab_size=200 --minloglevel=2");
  ASSERT_TRUE(status.ok()) << status.ToString();
  auto tokenizer = load("beside", unigram);
  EXPECT_EQ(tokenizer->vocab_size(), 200);
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("First Citizen")), "First Citizen");
}

TEST_F(TokenizerJsonTest, MalformedComponentsNameFileAndKey) {
  json tree = sentencepiece_tree(/*legacy=*/true);
  tree["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", "(unclosed"}};
  std::string error = load_error("regex", tree);
  EXPECT_NE(error.find("tokenizer.json: normalizer.normalizers[1].pattern.Regex: PCRE2 cannot "
                       "compile the pattern"),
            std::string::npos)
      << error;
  tree = sentencepiece_tree(/*legacy=*/false);
  tree["pre_tokenizer"]["prepend_scheme"] = "sometimes";
  error = load_error("scheme", tree);
  EXPECT_NE(error.find("pre_tokenizer.prepend_scheme: expected \"always\", \"first\" or "
                       "\"never\", got \"sometimes\""),
            std::string::npos)
      << error;
  tree = sentencepiece_tree(/*legacy=*/false);
  tree["decoder"]["decoders"][0] = {{"type", "CTC"}};
  error = load_error("ctc", tree);
  EXPECT_NE(error.find("decoder.decoders[0]: the decoder \"CTC\" is not supported"),
            std::string::npos)
      << error;
}

}  // namespace
