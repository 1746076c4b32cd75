// Unit tests of the safetensors reader and writer, including truncated and hostile files, and
// of remove_tree, which checkpoints and caches are removed with.
#include <fstream>

#include <gtest/gtest.h>

#include "lmtune/core/errors.h"
#include "lmtune/io/remove_tree.h"
#include "lmtune/io/safetensors.h"
#include "temp_dir_test.h"

namespace fs = std::filesystem;

namespace {

class SafetensorsTest : public TempDirTest {
 protected:
  // A file with the given header text and `data_bytes` zero bytes of data.
  fs::path raw(const std::string& header, std::size_t data_bytes, uint64_t declared_length = 0) {
    fs::path path = dir_ / "raw.safetensors";
    std::ofstream out(path, std::ios::binary);
    uint64_t length = declared_length ? declared_length : header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(length >> (8 * i)));
    out << header << std::string(data_bytes, '\0');
    return path;
  }

  // The InputError message opening `path`, or "" when it opens.
  std::string error_of(const fs::path& path) {
    try {
      lmtune::SafetensorsFile file(path);
    } catch (const lmtune::InputError& e) {
      EXPECT_EQ(e.exit_code(), lmtune::kExitBadInput);
      return e.what();
    }
    return "";
  }
};

TEST_F(SafetensorsTest, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  auto a = torch::randn({3, 5});
  auto b = torch::randn({7}).to(torch::kFloat16);
  auto c = torch::randn({2, 2, 2}).to(torch::kBFloat16);
  fs::path path = dir_ / "t.safetensors";
  lmtune::write_safetensors(path, {{"a", a}, {"b", b}, {"c", c.transpose(0, 2)}},
                            {{"format", "pt"}});
  lmtune::SafetensorsFile file(path);
  ASSERT_EQ(file.entries().size(), 3u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_TRUE(torch::equal(file.read(*file.find("a")), a));
  EXPECT_TRUE(torch::equal(file.read(*file.find("b")), b));
  EXPECT_TRUE(torch::equal(file.read(*file.find("c")), c.transpose(0, 2).contiguous()));
  EXPECT_EQ(file.find("missing"), nullptr);
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos)
        << "temporary left behind";
}

TEST_F(SafetensorsTest, TruncatedFiles) {
  fs::path path = dir_ / "t.safetensors";
  lmtune::write_safetensors(path, {{"w", torch::ones({64})}});
  auto size = fs::file_size(path);
  fs::resize_file(path, size - 10);
  EXPECT_NE(error_of(path).find("tensor 'w': data_offsets [0, 256) lie outside the data section"),
            std::string::npos)
      << error_of(path);
  fs::resize_file(path, 5);
  EXPECT_NE(error_of(path).find("shorter than its 8-byte header length"), std::string::npos);
  EXPECT_NE(error_of(dir_ / "absent.safetensors").find("cannot open"), std::string::npos);
}

TEST_F(SafetensorsTest, HostileHeaders) {
  EXPECT_NE(error_of(raw("{}", 0, /*declared_length=*/1ull << 60)).find("header length"),
            std::string::npos);
  EXPECT_NE(error_of(raw("{\"w\": [1, 2", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(raw("[1, 2]", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(raw(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}})", 16))
                .find("tensor 'w': shape needs 16 bytes but data_offsets span 8"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 16))
                .find("tensor 'w': data_offsets [8, 0) lie outside"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296],
                                   "data_offsets": [0, 8]}})",
                         16))
                .find("tensor 'w': shape is too large"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", 8))
                .find("tensor 'w' has dtype I64; lmtune reads F32, F16 and BF16"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                         16))
                .find("tensors 'a' and 'b' overlap"),
            std::string::npos);
  EXPECT_NE(error_of(raw(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4))
                .find("not a non-negative integer"),
            std::string::npos);
}

TEST_F(SafetensorsTest, FailedWriteLeavesTheOldFileIntact) {
  fs::path path = dir_ / "t.safetensors";
  lmtune::write_safetensors(path, {{"w", torch::ones({4})}});
  // A directory where the temporary file would go makes the write fail.
  fs::path blocker = path;
  blocker += ".tmp-" + std::to_string(::getpid());
  fs::create_directories(blocker);
  EXPECT_THROW(lmtune::write_safetensors(path, {{"w", torch::zeros({4})}}), lmtune::Error);
  lmtune::SafetensorsFile file(path);
  EXPECT_TRUE(torch::equal(file.read(*file.find("w")), torch::ones({4})));
}

TEST_F(SafetensorsTest, RemoveTreeRemovesNestedFilesButNotWhatALinkPointsTo) {
  const fs::path outside = dir_ / "outside.txt";
  std::ofstream(outside) << "kept";
  const fs::path tree = dir_ / "tree";
  fs::create_directories(tree / "a" / "b");
  std::ofstream(tree / "a" / "b" / "file") << "x";
  std::ofstream(tree / "top") << "y";
  fs::create_symlink(outside, tree / "a" / "link");
  fs::create_directory_symlink(dir_, tree / "dir-link");

  lmtune::remove_tree(tree);
  EXPECT_FALSE(fs::exists(fs::symlink_status(tree)));
  EXPECT_TRUE(fs::exists(outside));  // links are removed, never followed
  std::error_code error;
  EXPECT_TRUE(lmtune::remove_tree(tree, error)) << error.message();  // gone already: no error
}

}  // namespace
