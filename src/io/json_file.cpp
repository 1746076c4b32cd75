#include "lmtune/io/json_file.h"

#include <fstream>

#include "lmtune/core/errors.h"

namespace lmtune {

nlohmann::json read_json_file(const std::filesystem::path& file, const std::string& what,
                              bool object) {
  std::ifstream in(file);
  if (!in) throw InputError(file.string(), "cannot read " + what);
  auto tree = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded()) throw InputError(file.string(), "is not valid JSON");
  if (object && !tree.is_object()) throw InputError(file.string(), "expected a JSON object");
  return tree;
}

}  // namespace lmtune
