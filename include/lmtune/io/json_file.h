// Reading a JSON file with lmtune's error handling: a missing, unreadable or malformed file is an
// InputError naming it (exit 3).
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace lmtune {

// The parsed file. `what` names it in messages ("the model's config.json"); a file that is not a
// JSON object is an error too when `object` is set.
nlohmann::json read_json_file(const std::filesystem::path& file,
                              const std::string& what = "the file", bool object = false);

}  // namespace lmtune
