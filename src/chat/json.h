#pragma once
// JSON in and out of template values: the conversation (JSON, as Python's json.load reads it, key
// order kept) becomes Values, and |tojson writes Values back the way transformers' override of the
// filter does: Python's json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/value.h"

namespace moerun::chat {

// `where` names the value in messages ("messages[2].content"); invalid UTF-8, integers beyond int64
// and nesting deeper than kMaxValueDepth are errors. With `content`, every string (keys too) is
// marked as conversation content, all of it (chat/text.h).
Value from_json(const nlohmann::ordered_json& j, const std::string& where, bool content = false);

struct DumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // per level; nullopt: one line
  std::string item_separator = ", ";  // json.dumps' defaults: ", " (", " -> "," when indenting)
  std::string key_separator = ": ";
  bool sort_keys = false;
};
std::string dump_json(const Value& v, const DumpOptions& opt);

}  // namespace moerun::chat
