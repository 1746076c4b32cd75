// One exception type per failure class; only the CLI's main turns them into exit codes.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace lmtune {

// Exit codes of the command line (README.md, "Exit codes"); scripts rely on them.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitBadInput = 3;
inline constexpr int kExitInterrupted = 130;

// Base of every error lmtune reports to the user. what() is the message, already naming the
// file, key path or line it is about.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  virtual int exit_code() const { return kExitRuntime; }
};

// Bad command-line usage (exit 2).
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitUsage; }
};

// An invalid config: every problem found, each already prefixed with its file and key path (exit
// 2).
class ConfigError : public Error {
 public:
  explicit ConfigError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }
  int exit_code() const override { return kExitUsage; }

 private:
  std::vector<std::string> problems_;
};

// A missing, unreadable or malformed input file: data, model, tokenizer or checkpoint (exit 3).
class InputError : public Error {
 public:
  InputError(const std::string& path, const std::string& message);
  const std::string& path() const { return path_; }
  int exit_code() const override { return kExitBadInput; }

 private:
  std::string path_;
};

// Training stopped by SIGINT/SIGTERM after a checkpoint was saved (exit 130).
class Interrupted : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitInterrupted; }
};

}  // namespace lmtune
