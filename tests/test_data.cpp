// Unit tests of the data pipeline: reading, cleaning, packing, splitting, the token cache and the
// batcher, with a one-token-per-byte tokenizer so they do not depend on a real vocabulary.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/data/cleaning.h"
#include "lmtune/data/dataset.h"
#include "lmtune/data/token_cache.h"
#include "lmtune/io/tokenizer.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;
using lmtune::Batcher;
using lmtune::BatchPosition;
using lmtune::DataConfig;
using lmtune::PreparedData;
using lmtune::TokenSplit;

namespace {

constexpr int64_t kEos = 256;

// One token per byte, end-of-text 256; `shift` makes a tokenizer that encodes differently.
class ByteTokenizer : public lmtune::Tokenizer {
 public:
  explicit ByteTokenizer(int64_t shift = 0) : shift_(shift) {}
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> ids;
    for (unsigned char c : text) ids.push_back((c + shift_) % 256);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    for (int64_t id : ids) text += id == kEos ? '|' : static_cast<char>((id + 256 - shift_) % 256);
    return text;
  }
  int64_t vocab_size() const override { return kEos + 1; }
  std::optional<int64_t> eos_id() const override { return kEos; }
  void save(const fs::path&) const override {}

 private:
  int64_t shift_;
};

// The targets of each window as text: '|' for end-of-text, '_' where a target carries no loss.
std::vector<std::string> targets_of(const TokenSplit& split) {
  std::vector<std::string> windows;
  for (int64_t w = 0; w < split.num_windows(); ++w) {
    auto targets = split.batch({w}).targets[0];
    std::string text;
    for (int64_t i = 0; i < targets.size(0); ++i) {
      int64_t id = targets[i].item<int64_t>();
      text += id == -100 ? '_' : id == kEos ? '|' : static_cast<char>(id);
    }
    windows.push_back(text);
  }
  return windows;
}

// The inputs of each window as text ('|' for end-of-text and padding).
std::vector<std::string> inputs_of(const TokenSplit& split) {
  std::vector<std::string> windows;
  for (int64_t w = 0; w < split.num_windows(); ++w) {
    auto inputs = split.batch({w}).inputs[0];
    std::vector<int64_t> ids(inputs.data_ptr<int64_t>(),
                             inputs.data_ptr<int64_t>() + inputs.numel());
    windows.push_back(ByteTokenizer().decode(ids));
  }
  return windows;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& part : parts) out += part;
  return out;
}

class DataTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    config_.seq_len = 64;
  }

  fs::path write(const std::string& name, const std::string& text) {
    fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  // Prepares `text` written as the file `name`, the training data.
  PreparedData prepare(const std::string& name, const std::string& text) {
    config_.train = write(name, text).string();
    return prepare();
  }
  PreparedData prepare(const lmtune::Tokenizer& tokenizer = ByteTokenizer()) {
    return lmtune::prepare_data(config_, tokenizer, dir_ / "cache");
  }

  // The message of the InputError preparing throws, or "" when it succeeds.
  std::string error_preparing() {
    try {
      prepare();
    } catch (const lmtune::InputError& e) {
      EXPECT_EQ(e.exit_code(), lmtune::kExitBadInput);
      return e.what();
    }
    return "";
  }

  DataConfig config_;
};

TEST_F(DataTest, TxtDocumentsAreSeparatedByBlankLines) {
  auto data = prepare("t.txt", "one\nline two\n\n\n  \t\nthree\r\n\r\nfour\n");
  EXPECT_EQ(data.report.documents, 3);
  EXPECT_EQ(data.report.files, 1);
  EXPECT_EQ(data.report.bytes, 33);
  // Every document follows an end-of-text; padding of the last window carries no loss.
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 24), "one\nline two|three|four|");
  EXPECT_EQ(data.report.train_tokens, 24);  // 21 characters and 3 end-of-texts
}

TEST_F(DataTest, TxtFileModeAndDirectoriesInNameOrder) {
  write("d/b.txt", "B\n\nB2");
  write("d/a.txt", "A");
  write("d/notes.md", "ignored");
  config_.train = (dir_ / "d").string();
  config_.txt_documents = lmtune::TxtDocuments::kFile;
  auto data = prepare();
  EXPECT_EQ(data.report.files, 2);
  EXPECT_EQ(data.report.documents, 2);
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 8), "A|B\n\nB2|");
}

TEST_F(DataTest, JsonlTextAndPromptCompletionMasks) {
  std::string lines = R"({"text": "plain"}
{"prompt": "Q?", "completion": "A!"}

{"prompt": "", "completion": "B"}
)";
  auto data = prepare("t.jsonl", lines);
  EXPECT_EQ(data.report.documents, 3);
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 13), "plain|__A!|B|");

  config_.loss_on_prompt = true;
  EXPECT_EQ(joined(targets_of(prepare().train)).substr(0, 13), "plain|Q?A!|B|");
}

// A tokenizer whose template frames each text with a BOS ('^', as Llama 3's does) or also ends it
// with its end-of-text (as Llama 2 templates with EOS do).
class FramingTokenizer : public ByteTokenizer {
 public:
  explicit FramingTokenizer(lmtune::TokenFraming framing) : framing_(std::move(framing)) {}
  lmtune::TokenFraming framing() const override { return framing_; }

 private:
  lmtune::TokenFraming framing_;
};

TEST_F(DataTest, DocumentsAreFramedAsTheTokenizerTemplateSays) {
  write("t.jsonl", "{\"text\": \"ab\"}\n{\"prompt\": \"Q\", \"completion\": \"A\"}\n");
  config_.train = (dir_ / "t.jsonl").string();
  // The BOS is given, never a target; one end-of-text ends each document.
  auto bos_only = prepare(FramingTokenizer({{'^'}, {}}));
  EXPECT_EQ(joined(inputs_of(bos_only.train)).substr(0, 9), "|^ab|^QA|");
  EXPECT_EQ(joined(targets_of(bos_only.train)).substr(0, 8), "_ab|__A|");
  EXPECT_EQ(bos_only.report.train_tokens, 8);  // 2 documents: BOS, 2 tokens, end-of-text
  auto bos_and_eos = prepare(FramingTokenizer({{'^'}, {kEos}}));
  EXPECT_EQ(joined(targets_of(bos_and_eos.train)).substr(0, 8), "_ab|__A|");
  // A changed framing is a different cache.
  EXPECT_NE(bos_only.report.cache_dir, prepare().report.cache_dir);
}

TEST_F(DataTest, JsonlFieldNamesAreConfigurable) {
  config_.text_field = "body";
  config_.prompt_field = "in";
  config_.completion_field = "out";
  auto data = prepare("t.jsonl", "{\"body\": \"x\"}\n{\"in\": \"q\", \"out\": \"a\"}\n");
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 5), "x|_a|");
}

TEST_F(DataTest, PackedWindowsOverlapByOneToken) {
  config_.seq_len = 3;
  auto data = prepare("t.txt", "abc\n\ndefg\n");
  // Stream "|abc|defg|": 10 tokens make (10 - 1) / 3 = 3 windows of 4.
  EXPECT_EQ(data.train.num_windows(), 3);
  EXPECT_EQ(inputs_of(data.train), (std::vector<std::string>{"|ab", "c|d", "efg"}));
  EXPECT_EQ(targets_of(data.train), (std::vector<std::string>{"abc", "|de", "fg|"}));
  auto batch = data.train.batch({2, 0});
  EXPECT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(batch.inputs.dtype(), torch::kInt64);
  EXPECT_EQ(batch.target_tokens, 6);
}

TEST_F(DataTest, PaddedDocumentsStartTheirOwnWindows) {
  config_.seq_len = 4;
  config_.packing = lmtune::Packing::kPad;
  auto data = prepare("t.txt", "ab\n\ncdefgh\n");
  EXPECT_EQ(targets_of(data.train), (std::vector<std::string>{"ab|_", "cdef", "gh|_"}));
  EXPECT_EQ(inputs_of(data.train), (std::vector<std::string>{"|ab|", "|cde", "fgh|"}));
  EXPECT_EQ(data.train.batch({0, 1, 2}).target_tokens, 10);
  EXPECT_EQ(data.report.train_tokens, 10);
}

TEST_F(DataTest, PackedDataPadsOnlyItsLastWindow) {
  config_.seq_len = 4;
  auto data = prepare("t.txt", "ab\n\ncdefgh\n");
  EXPECT_EQ(targets_of(data.train), (std::vector<std::string>{"ab|c", "defg", "h|__"}));
}

TEST(DataCleaningTest, StripUrls) {
  std::string text = "see https://example.com/a?b=1. or www.foo.org, (http://x.io/a_(b)) www. ok";
  EXPECT_EQ(lmtune::strip_urls(text), 3);
  EXPECT_EQ(text, "see . or , () www. ok");
  std::string none = "a swww.x and http:// alone";
  EXPECT_EQ(lmtune::strip_urls(none), 0);
}

TEST(DataCleaningTest, StripHtmlTags) {
  std::string text = "<p class=\"x\">Hi <b>there</b></p><!-- note --> a < b, <3 <br/>";
  EXPECT_EQ(lmtune::strip_html_tags(text), 6);
  EXPECT_EQ(text, "Hi there a < b, <3 ");
}

TEST(DataCleaningTest, DropControlCharsKeepsNewlineAndTab) {
  std::string text =
      "a\x01"
      "b\tc\r\n\x7f\xc2\x85\xc3\xa9";
  EXPECT_EQ(lmtune::drop_control_chars(text), 4);
  EXPECT_EQ(text, "ab\tc\n\xc3\xa9");
  EXPECT_EQ(lmtune::count_chars("h\xc3\xa9llo \xf0\x9f\x99\x82"), 7);
}

TEST_F(DataTest, CleaningStepsAreCountedAndSwitchable) {
  std::string lines =
      "{\"text\": \"<b>bold</b> https://a.com x\\u0001\"}\n"
      "{\"prompt\": \"<i>q</i>\", \"completion\": \"www.b.org \\u0002y\"}\n";
  config_.strip_urls = true;
  config_.strip_html = true;
  auto data = prepare("t.jsonl", lines);
  EXPECT_EQ(data.report.html_tags_stripped, 4);
  EXPECT_EQ(data.report.urls_stripped, 2);
  EXPECT_EQ(data.report.control_chars_dropped, 2);
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 16), "bold  x|_ y|____");

  config_.strip_urls = config_.strip_html = config_.drop_control_chars = false;
  data = prepare();
  EXPECT_EQ(data.report.html_tags_stripped + data.report.urls_stripped +
                data.report.control_chars_dropped,
            0);
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 8), "<b>bold<");
}

TEST_F(DataTest, ShortAndEmptyDocumentsAreDropped) {
  std::string lines = "{\"text\": \"abc\"}\n{\"text\": \"h\\u00e9llo\"}\n{\"text\": \" \\n \"}\n";
  auto data = prepare("t.jsonl", lines);
  EXPECT_EQ(data.report.dropped_short, 1);  // only the blank one, with min_chars 0
  config_.min_chars = 5;
  data = prepare();
  EXPECT_EQ(data.report.dropped_short, 2);
  EXPECT_EQ(data.report.train_documents, 1);
  EXPECT_EQ(joined(targets_of(data.train)).substr(0, 7), "h\xc3\xa9llo|");
}

TEST_F(DataTest, ExactDuplicatesAreDropped) {
  std::string lines = R"({"text": "a"}
{"text": "a"}
{"prompt": "", "completion": "a"}
{"prompt": "a", "completion": "b"}
{"prompt": "a", "completion": "b"}
{"prompt": "ab", "completion": ""}
)";
  auto data = prepare("t.jsonl", lines);
  EXPECT_EQ(data.report.dropped_duplicates, 2);
  EXPECT_EQ(data.report.train_documents, 4);
  config_.dedupe = false;
  EXPECT_EQ(prepare().report.train_documents, 6);
}

TEST_F(DataTest, ValidationSplitIsDeterministicAndEven) {
  std::string text;
  for (int i = 0; i < 20; ++i) text += "doc " + std::to_string(i) + "\n\n";
  config_.validation_split = 0.1;
  config_.seq_len = 8;
  auto data = prepare("t.txt", text);
  EXPECT_EQ(data.report.train_documents, 18);
  EXPECT_EQ(data.report.validation_documents, 2);
  EXPECT_EQ(joined(targets_of(data.validation)).substr(0, 12), "doc 9|doc 19");
  EXPECT_EQ(joined(targets_of(data.train)).find("doc 9|"), std::string::npos);

  auto again = lmtune::prepare_data(config_, ByteTokenizer(), dir_ / "other-cache");
  EXPECT_FALSE(again.report.from_cache);
  EXPECT_EQ(targets_of(again.validation), targets_of(data.validation));
  EXPECT_EQ(targets_of(again.train), targets_of(data.train));
}

TEST_F(DataTest, ValidationFileIsDedupedAgainstTrain) {
  config_.validation = write("v.txt", "seen\n\nnew\n").string();
  auto data = prepare("t.txt", "seen\n\nother\n");
  EXPECT_EQ(data.report.validation_documents, 1);
  EXPECT_EQ(data.report.dropped_duplicates, 1);
  EXPECT_EQ(data.report.files, 2);
  EXPECT_EQ(joined(targets_of(data.validation)).substr(0, 4), "new|");
  EXPECT_EQ(data.validation.num_windows(), 1);
}

TEST_F(DataTest, NoValidationDataMeansNoWindows) {
  auto data = prepare("t.txt", "a\n");
  EXPECT_EQ(data.validation.num_windows(), 0);
  EXPECT_EQ(data.report.validation_tokens, 0);
}

TEST_F(DataTest, SecondPrepareReusesTheCache) {
  auto first = prepare("t.txt", "hello\n\nworld\n");
  EXPECT_FALSE(first.report.from_cache);
  EXPECT_GT(first.report.seconds, 0);
  auto second = prepare();
  EXPECT_TRUE(second.report.from_cache);
  EXPECT_EQ(second.report.seconds, 0);
  EXPECT_EQ(second.report.cache_dir, first.report.cache_dir);
  EXPECT_EQ(second.report.train_tokens, first.report.train_tokens);
  EXPECT_EQ(targets_of(second.train), targets_of(first.train));
  // Only complete caches are in the cache root, beside their builders' lock file: the build
  // directory was renamed into place.
  std::vector<std::string> entries;
  for (const auto& entry : fs::directory_iterator(dir_ / "cache"))
    entries.push_back(entry.path().filename().string());
  std::sort(entries.begin(), entries.end());
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].rfind("tokens-", 0), 0u) << entries[1];
  EXPECT_EQ(entries[0], "." + entries[1] + ".lock");
}

TEST_F(DataTest, CacheIsRebuiltWhenContentOptionsOrTokenizerChange) {
  auto base = prepare("t.txt", "hello\n\nworld\n").report.cache_dir;
  auto changed = [&](auto change) {
    change();
    auto report = prepare().report;
    return !report.from_cache && report.cache_dir != base;
  };
  EXPECT_TRUE(changed([&] { write("t.txt", "hello\n\nworle\n"); }));
  EXPECT_TRUE(changed([&] { config_.seq_len = 32; }));
  EXPECT_TRUE(changed([&] { config_.strip_urls = true; }));
  EXPECT_TRUE(changed([&] { config_.packing = lmtune::Packing::kPad; }));
  auto report = prepare(ByteTokenizer(/*shift=*/1)).report;
  EXPECT_FALSE(report.from_cache);
  EXPECT_TRUE(prepare(ByteTokenizer(/*shift=*/1)).report.from_cache);
}

TEST_F(DataTest, OrderOptionsReuseTheCache) {
  auto base = prepare("t.txt", "hello\n\nworld\n").report.cache_dir;
  config_.order = lmtune::DataOrder::kCurriculum;
  config_.curriculum_start_fraction = 0.5;
  config_.curriculum_pace_steps = 7;
  auto report = prepare().report;
  EXPECT_TRUE(report.from_cache);
  EXPECT_EQ(report.cache_dir, base);
}

TEST_F(DataTest, ScoreFilesRoundTripAndAreNamedByWhatMadeThem) {
  fs::path file = lmtune::score_file(dir_, "train", "loss", {{"weights", "a"}});
  EXPECT_EQ(file.parent_path(), dir_);
  EXPECT_EQ(file.filename().string().rfind("train.loss-", 0), 0u) << file;
  EXPECT_NE(file, lmtune::score_file(dir_, "train", "loss", {{"weights", "b"}}));
  EXPECT_FALSE(lmtune::read_scores(file, 3).has_value());
  const std::vector<double> scores = {2.5, -0.125, 1e-300};
  lmtune::write_scores(file, scores);
  auto read = lmtune::read_scores(file, 3);
  ASSERT_TRUE(read.has_value());
  EXPECT_EQ(*read, scores);
  EXPECT_FALSE(lmtune::read_scores(file, 4).has_value());  // another number of windows
}

TEST_F(DataTest, DamagedOrIncompleteCacheIsRebuilt) {
  fs::path cache = prepare("t.txt", "hello\n\nworld\n").report.cache_dir;
  fs::resize_file(cache / "train.tokens", 5);
  auto rebuilt = prepare();
  EXPECT_FALSE(rebuilt.report.from_cache);
  EXPECT_EQ(rebuilt.report.cache_dir, cache.string());
  EXPECT_EQ(joined(targets_of(rebuilt.train)).substr(0, 12), "hello|world|");
  // Without its meta.json (written last) a cache is incomplete.
  fs::remove(cache / "meta.json");
  EXPECT_FALSE(prepare().report.from_cache);
  EXPECT_TRUE(prepare().report.from_cache);
}

TEST_F(DataTest, BadJsonLineIsAnErrorNamingFileAndLine) {
  config_.train = write("t.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": oops}\n").string();
  EXPECT_EQ(error_preparing().rfind(config_.train + ":3: invalid JSON: ", 0), 0u)
      << error_preparing();
  config_.train = write("u.jsonl", "{\"text\": \"ok\"}\n{\"title\": \"x\"}\n").string();
  EXPECT_EQ(error_preparing(), config_.train +
                                   ":2: missing field \"text\" (or \"prompt\" and "
                                   "\"completion\")");
  config_.train = write("v.jsonl", "{\"prompt\": \"x\"}\n").string();
  EXPECT_EQ(error_preparing(), config_.train + ":1: missing field \"completion\"");
  config_.train = write("w.jsonl", "[1]\n{\"text\": 3}\n").string();
  EXPECT_EQ(error_preparing(), config_.train + ":1: expected a JSON object, got array");
}

TEST_F(DataTest, SkipBadLinesCountsThem) {
  config_.skip_bad_lines = true;
  auto data = prepare("t.jsonl", "{\"text\": \"ok\"}\nnot json\n{\"txt\": \"x\"}\n{\"text\": 1}\n");
  EXPECT_EQ(data.report.bad_lines_skipped, 3);
  EXPECT_EQ(data.report.train_documents, 1);
  config_.train = write("u.jsonl", "bad\nworse\n").string();
  EXPECT_EQ(error_preparing(), config_.train +
                                   ": no documents: all 2 lines were invalid and skipped "
                                   "(data.skip_bad_lines)");
}

TEST_F(DataTest, EmptyAfterCleaningSaysWhy) {
  config_.min_chars = 50;
  config_.train = write("t.txt", "short\n\nshort\n\ntiny\n").string();
  EXPECT_EQ(error_preparing(),
            config_.train + ": all 3 documents were dropped: 3 shorter than data.min_chars=50");
  config_.min_chars = 10;
  config_.train = write("t.txt", "long enough text\n").string();
  config_.validation = write("v.txt", "long enough text\n\ntiny\n").string();
  EXPECT_EQ(error_preparing(), config_.validation +
                                   ": all 2 documents were dropped: 1 shorter than "
                                   "data.min_chars=10, 1 duplicate");
  config_.validation.clear();
  config_.train = write("e.txt", "\n\n").string();
  EXPECT_EQ(error_preparing(), config_.train + ": no documents: the data is empty");
}

TEST_F(DataTest, MissingAndUnsupportedFilesAreInputErrors) {
  config_.train = (dir_ / "missing.txt").string();
  EXPECT_EQ(error_preparing(), config_.train + ": no such file or directory (data.train)");
  config_.train = write("t.csv", "a,b\n").string();
  EXPECT_NE(error_preparing().find("expected a .txt or .jsonl file"), std::string::npos);
  fs::create_directories(dir_ / "empty");
  config_.train = (dir_ / "empty").string();
  EXPECT_NE(error_preparing().find("no .txt or .jsonl files"), std::string::npos);
}

class BatcherTest : public DataTest {
 protected:
  // A split of `windows` windows: window w is end-of-text and the character '0' + w.
  TokenSplit split(int windows) {
    config_.seq_len = 2;
    std::string text;
    for (int w = 0; w < windows; ++w) text += std::string(1, static_cast<char>('0' + w)) + "\n\n";
    prepared_ = prepare("t.txt", text);
    return prepared_.train;
  }

  PreparedData prepared_;
};

// The windows of the next `batches` batches, in order.
std::vector<int64_t> take(Batcher& batcher, int batches) {
  std::vector<int64_t> windows;
  for (int i = 0; i < batches; ++i) {
    auto batch = batcher.next();
    for (int64_t b = 0; b < batch.targets.size(0); ++b)
      windows.push_back(batch.targets[b][0].item<int64_t>() - '0');
  }
  return windows;
}

std::vector<int64_t> order_of_epoch(const TokenSplit& split, uint64_t seed, int64_t epoch) {
  Batcher batcher(split, /*batch_size=*/1, seed);
  batcher.set_position({epoch, 0});
  return take(batcher, static_cast<int>(split.num_windows()));
}

TEST_F(BatcherTest, EpochIsAPermutationDroppingThePartialBatch) {
  TokenSplit train = split(25);
  Batcher batcher(train, /*batch_size=*/4, /*seed=*/7);
  EXPECT_EQ(batcher.batches_per_epoch(), 6);
  auto batch = Batcher(train, 4, 7).next();
  EXPECT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{4, 2}));
  std::vector<int64_t> epoch = take(batcher, 6);
  std::set<int64_t> distinct(epoch.begin(), epoch.end());
  EXPECT_EQ(distinct.size(), 24u);
  EXPECT_LE(*distinct.rbegin(), 24);
  EXPECT_EQ(batcher.position().epoch, 1);
  EXPECT_EQ(batcher.position().index, 0);
}

TEST_F(BatcherTest, OrderIsFixedBySeedAndEpoch) {
  TokenSplit train = split(10);
  auto epoch0 = order_of_epoch(train, 1234, 0);
  EXPECT_EQ(epoch0, order_of_epoch(train, 1234, 0));
  EXPECT_NE(epoch0, order_of_epoch(train, 1234, 1));
  EXPECT_NE(epoch0, order_of_epoch(train, 1235, 0));
  // The order is the same on every machine: it must never change silently.
  EXPECT_EQ(epoch0, (std::vector<int64_t>{3, 1, 6, 5, 8, 4, 7, 0, 2, 9}));
}

TEST_F(BatcherTest, SetPositionContinuesWithTheSameBatches) {
  TokenSplit train = split(25);
  Batcher reference(train, /*batch_size=*/3, /*seed=*/42);
  take(reference, 10);  // into the second epoch: 8 batches per epoch
  BatchPosition saved = reference.position();
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.index, 6);
  auto expected = take(reference, 12);

  Batcher resumed(train, /*batch_size=*/3, /*seed=*/42);
  resumed.set_position(saved);
  EXPECT_EQ(take(resumed, 12), expected);
  EXPECT_THROW(resumed.set_position({0, 26}), lmtune::Error);
  EXPECT_THROW(resumed.set_position({-1, 0}), lmtune::Error);
}

TEST_F(BatcherTest, SequentialTakesWindowsInFileOrderEveryEpoch) {
  TokenSplit train = split(7);
  Batcher batcher(train, /*batch_size=*/2, /*seed=*/3, lmtune::DataOrder::kSequential);
  EXPECT_EQ(take(batcher, 6), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}));
}

TEST_F(DataTest, WindowDocumentLengthsAreTheLongestDocumentWithATargetInEachWindow) {
  config_.seq_len = 4;
  // Stream: <eos> abcdefghij <eos> k <eos> l <eos> <pad>, 17 tokens in 4 windows of targets
  // 1-4, 5-8, 9-12 and 13-16: the first three hold the 11-token document (with its end-of-text).
  auto data = prepare("t.txt", "abcdefghij\n\nk\n\nl\n");
  ASSERT_EQ(data.train.num_windows(), 4);
  EXPECT_EQ(data.train.window_document_lengths(kEos), (std::vector<int64_t>{11, 11, 11, 2}));
}

class CurriculumTest : public DataTest {
 protected:
  // Documents of 1 to 24 characters in a scrambled file order, each padded into its own windows of
  // 4 targets, ranked by length.
  void SetUp() override {
    DataTest::SetUp();
    config_.seq_len = 4;
    config_.packing = lmtune::Packing::kPad;
    std::string text;
    for (int i = 0; i < 24; ++i) text += std::string(1 + (i * 7) % 24, 'a' + i % 26) + "\n\n";
    prepared_ = prepare("t.txt", text);
    lengths_ = prepared_.train.window_document_lengths(kEos);
    scores_.assign(lengths_.begin(), lengths_.end());
  }

  lmtune::Curriculum curriculum(double start_fraction, int64_t pace_steps,
                                int64_t batches_per_step = 1) const {
    return {lmtune::rank_easiest_first(scores_), start_fraction, pace_steps, batches_per_step};
  }
  Batcher batcher(uint64_t seed, const lmtune::Curriculum& curriculum, int64_t batch_size = 4) {
    return Batcher(prepared_.train, batch_size, seed, lmtune::DataOrder::kCurriculum, curriculum);
  }
  // The windows of the next `batches` micro-batches.
  static std::vector<std::vector<int64_t>> draw(Batcher& batcher, int batches) {
    std::vector<std::vector<int64_t>> drawn;
    for (int i = 0; i < batches; ++i) {
      drawn.push_back(batcher.peek());
      batcher.next();
    }
    return drawn;
  }

  PreparedData prepared_;
  std::vector<int64_t> lengths_;  // per window
  std::vector<double> scores_;    // the same, as curriculum scores
};

TEST_F(CurriculumTest, RankingByLengthPutsTheShortestDocumentsFirst) {
  auto ranked = lmtune::rank_easiest_first(scores_);
  ASSERT_EQ(ranked.size(), lengths_.size());
  EXPECT_EQ(std::set<int64_t>(ranked.begin(), ranked.end()).size(), ranked.size());
  for (std::size_t i = 1; i < ranked.size(); ++i)
    EXPECT_LE(lengths_[ranked[i - 1]], lengths_[ranked[i]]);
  EXPECT_EQ(lengths_[ranked.front()], 2);  // one character and its end-of-text
  EXPECT_EQ(lengths_[ranked.back()], 25);
}

TEST_F(CurriculumTest, FirstBatchesComeFromTheShortestDocuments) {
  const int64_t n = prepared_.train.num_windows();
  // All ten micro-batches below belong to step 0, so the same windows stay available.
  auto cur = curriculum(/*start_fraction=*/0.25, /*pace_steps=*/1000, /*batches_per_step=*/10);
  auto sorted = lengths_;
  std::sort(sorted.begin(), sorted.end());
  const int64_t open = (n + 3) / 4;  // ceil(n / 4) windows at step 0
  Batcher b = batcher(/*seed=*/5, cur);
  EXPECT_EQ(b.available_windows(), open);
  std::set<int64_t> seen;
  for (const auto& batch : draw(b, 10)) {
    EXPECT_EQ(std::set<int64_t>(batch.begin(), batch.end()).size(), batch.size());
    for (int64_t w : batch) {
      EXPECT_LE(lengths_[w], sorted[open - 1]) << "window " << w;
      seen.insert(w);
    }
  }
  // Shuffled within what is available, not the same few windows.
  EXPECT_GT(seen.size(), static_cast<std::size_t>(open / 2));
  // A plain shuffle draws longer documents at once.
  Batcher shuffled(prepared_.train, 4, 5);
  int64_t longest = 0;
  for (int i = 0; i < 10; ++i) {
    for (int64_t w : shuffled.peek()) longest = std::max(longest, lengths_[w]);
    shuffled.next();
  }
  EXPECT_GT(longest, sorted[open - 1]);
}

TEST_F(CurriculumTest, AvailableFractionGrowsAsSpecified) {
  const int64_t n = prepared_.train.num_windows();
  // Two micro-batches per optimizer step: the available windows change every other batch.
  auto cur = curriculum(/*start_fraction=*/0.2, /*pace_steps=*/10, /*batches_per_step=*/2);
  std::vector<int64_t> rank_of(static_cast<std::size_t>(n));
  for (int64_t r = 0; r < n; ++r) rank_of[cur.ranked[r]] = r;
  Batcher b = batcher(/*seed=*/9, cur, /*batch_size=*/3);
  for (int64_t step = 0; step < 14; ++step) {
    const double fraction = step < 10 ? 0.2 + (1 - 0.2) * static_cast<double>(step) / 10 : 1.0;
    const auto expected =
        std::max<int64_t>(3, static_cast<int64_t>(std::ceil(static_cast<double>(n) * fraction)));
    for (int micro = 0; micro < 2; ++micro) {
      EXPECT_EQ(b.available_windows(), std::min(expected, n)) << "step " << step;
      for (int64_t w : b.peek()) EXPECT_LT(rank_of[w], expected) << "step " << step;
      b.next();
    }
  }
  EXPECT_EQ(b.available_windows(), n);
}

TEST_F(CurriculumTest, AfterThePaceEpochsAreShuffledPermutations) {
  const int64_t n = prepared_.train.num_windows();
  Batcher b = batcher(/*seed=*/2, curriculum(0.5, /*pace_steps=*/3), /*batch_size=*/1);
  draw(b, 3);
  EXPECT_EQ(b.available_windows(), n);
  std::set<int64_t> rest;
  for (const auto& batch : draw(b, static_cast<int>(n) - 3)) rest.insert(batch[0]);
  EXPECT_EQ(static_cast<int64_t>(rest.size()), n - 3);  // the rest of epoch 0, no repeats
}

TEST_F(CurriculumTest, OrderIsFixedBySeedAndResumesExactly) {
  auto cur = curriculum(/*start_fraction=*/0.3, /*pace_steps=*/8);
  Batcher first = batcher(/*seed=*/11, cur);
  Batcher second = batcher(/*seed=*/11, cur);
  Batcher other = batcher(/*seed=*/12, cur);
  auto expected = draw(first, 12);
  EXPECT_EQ(draw(second, 12), expected);
  EXPECT_NE(draw(other, 12), expected);

  Batcher reference = batcher(/*seed=*/11, cur);
  draw(reference, 5);
  BatchPosition saved = reference.position();
  Batcher resumed = batcher(/*seed=*/11, cur);
  resumed.set_position(saved);
  EXPECT_EQ(draw(resumed, 7),
            std::vector<std::vector<int64_t>>(expected.begin() + 5, expected.end()));
}

TEST_F(BatcherTest, TooFewWindowsForABatchIsAnError) {
  TokenSplit train = split(3);
  ASSERT_EQ(train.num_windows(), 3);
  Batcher batcher(train, /*batch_size=*/8, /*seed=*/1);
  EXPECT_EQ(batcher.batches_per_epoch(), 0);
  EXPECT_THROW(batcher.next(), lmtune::Error);
}

}  // namespace
