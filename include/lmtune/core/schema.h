// Describes one config key (name, help, limits) for the visitors that read, write and list the
// config.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace lmtune {

// What a config field declares about itself: its key, its documentation and its valid range.
class Field {
 public:
  Field(const char* name, const char* help) : name_(name), help_(help) {}

  Field& min(double value) {
    min_ = value;
    return *this;
  }
  Field& max(double value) {
    max_ = value;
    return *this;
  }
  // Like min(), but the bound itself is not allowed (a learning rate must be > 0).
  Field& above(double value) {
    min_ = value;
    min_exclusive_ = true;
    return *this;
  }
  // A file or directory: resolved against the config file's directory (see docs/config.md).
  Field& path() {
    is_path_ = true;
    return *this;
  }
  // An integer that may also be spelled `auto`, held as 0 (train.micro_batch_size).
  Field& or_auto() {
    or_auto_ = true;
    return *this;
  }

  const char* name() const { return name_; }
  const char* help() const { return help_; }
  std::optional<double> min_value() const { return min_; }
  std::optional<double> max_value() const { return max_; }
  bool min_exclusive() const { return min_exclusive_; }
  bool is_path() const { return is_path_; }
  bool allows_auto() const { return or_auto_; }

 private:
  const char* name_;
  const char* help_;
  std::optional<double> min_;
  std::optional<double> max_;
  bool min_exclusive_ = false;
  bool is_path_ = false;
  bool or_auto_ = false;
};

// Spellings of an enum's values in config files. Specialised next to each config enum.
template <class E>
struct EnumNames;

template <class E, std::size_t N>
using EnumTable = std::array<std::pair<E, std::string_view>, N>;

template <class E>
std::string_view enum_name(E value) {
  for (const auto& [candidate, name] : EnumNames<E>::kTable)
    if (candidate == value) return name;
  return "?";
}

template <class E>
std::optional<E> enum_from_name(std::string_view name) {
  for (const auto& [candidate, spelling] : EnumNames<E>::kTable)
    if (spelling == name) return candidate;
  return std::nullopt;
}

template <class E, class = void>
struct IsConfigEnum : std::false_type {};
template <class E>
struct IsConfigEnum<E, std::void_t<decltype(EnumNames<E>::kTable)>> : std::true_type {};

}  // namespace lmtune
