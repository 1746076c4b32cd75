// Test fixture base: a fresh temporary directory per test (dir_), removed after it.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "lmtune/io/remove_tree.h"

class TempDirTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("lmtune_" +
            std::string(testing::UnitTest::GetInstance()->current_test_info()->test_suite_name()) +
            "_" + std::to_string(::getpid()) + "_" +
            testing::UnitTest::GetInstance()->current_test_info()->name());
    lmtune::remove_tree(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { lmtune::remove_tree(dir_); }

  std::filesystem::path dir_;
};
