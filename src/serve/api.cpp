#include "serve/api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>

#include "moerun/error.h"
#include "util/strings.h"
#include "util/utf8.h"

namespace moerun::serve {

using detail::cat;

namespace {

// --- errors ---------------------------------------------------------------------------------------

// `s` cut to at most `max` bytes at a character boundary (with "..." when cut), made valid UTF-8
// first: messages quote client text and nlohmann's own messages, and a message that is not valid
// UTF-8 would make dumping the error body throw.
std::string clip(std::string_view s, size_t max) {
  std::string out = detail::is_valid_utf8(s) ? std::string(s) : detail::utf8_lossy(s);
  if (out.size() <= max) return out;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(out[end]) & 0xC0) == 0x80) --end;
  out.resize(end);
  return out + "...";
}

// Client text in a message: short, quoted, control bytes escaped.
std::string show(std::string_view s) { return detail::quote(clip(s, 60), std::string::npos); }

[[noreturn]] void fail(std::string param, std::string message) {
  ApiError e;
  e.message = std::move(message);
  e.param = clip(param, 200);
  throw RequestError(std::move(e));
}

// The JSON type as messages name it (the vocabulary of io/json_util.cpp: list, object, integer...).
std::string found(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return j.get<bool>() ? "true" : "false";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "an integer";
    case Json::value_t::number_float: return "a number";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "a list";
    case Json::value_t::object: return "an object";
    default: return "a binary value";
  }
}

[[noreturn]] void type_error(const std::string& name, const char* expected, const Json& j) {
  fail(name, cat("'", name, "' must be ", expected, ", found ", found(j)));
}

// A number as written back in a range error (a scalar: dump() cannot recurse or throw here).
std::string number_text(const Json& j) { return j.dump(); }

[[noreturn]] void range_error(const std::string& name, const std::string& expected, const Json& j) {
  fail(name, cat("'", name, "' must be ", expected, ", found ", number_text(j)));
}

// --- field access ---------------------------------------------------------------------------------

// nullptr when absent or null: OpenAI's clients send null for every unset optional field.
const Json* field(const Json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string join(const std::string& prefix, const char* key) { return prefix.empty() ? key : cat(prefix, ".", key); }

std::optional<bool> opt_bool(const Json& obj, const char* key, const std::string& prefix = "") {
  const Json* j = field(obj, key);
  if (!j) return std::nullopt;
  if (!j->is_boolean()) type_error(join(prefix, key), "true or false", *j);
  return j->get<bool>();
}

const std::string* opt_string(const Json& obj, const char* key, const std::string& prefix = "") {
  const Json* j = field(obj, key);
  if (!j) return nullptr;
  if (!j->is_string()) type_error(join(prefix, key), "a string", *j);
  return j->get_ptr<const std::string*>();
}

// An integer (an integral float such as 5.0 too, as io/json_util.cpp accepts), which must lie in
// [lo, hi]; `expected` describes that range for the message.
int64_t integer_in(const Json& j, const std::string& name, int64_t lo, int64_t hi, const std::string& expected) {
  int64_t v = 0;
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) range_error(name, expected, j);
    v = static_cast<int64_t>(u);
  } else if (j.is_number_integer()) {
    v = j.get<int64_t>();
  } else if (j.is_number_float()) {
    const double d = j.get<double>();
    if (d != std::trunc(d)) fail(name, cat("'", name, "' must be an integer, found ", number_text(j)));
    // 2^63 is the first double outside int64: the range check comes before the cast.
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) range_error(name, expected, j);
    v = static_cast<int64_t>(d);
  } else {
    type_error(name, "an integer", j);
  }
  if (v < lo || v > hi) range_error(name, expected, j);
  return v;
}

std::optional<int64_t> opt_integer(const Json& obj, const char* key, int64_t lo, int64_t hi, const std::string& expected) {
  const Json* j = field(obj, key);
  if (!j) return std::nullopt;
  return integer_in(*j, key, lo, hi, expected);
}

// A float field: a JSON number (integers too) that is finite as a float and passes `ok`.
template <class Ok>
std::optional<float> opt_float(const Json& obj, const char* key, Ok ok, const char* expected) {
  const Json* j = field(obj, key);
  if (!j) return std::nullopt;
  if (!j->is_number()) type_error(key, "a number", *j);
  const double d = j->get<double>();
  // The parser never yields NaN or infinity, but 1e39 is a finite double and an infinite float.
  if (!std::isfinite(d) || std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max()))
    fail(key, cat("'", key, "' must be ", expected, ", found ", number_text(*j), " (out of range)"));
  const float f = static_cast<float>(d);
  if (!ok(f)) range_error(key, expected, *j);
  return f;
}

// --- parsing --------------------------------------------------------------------------------------

// Builds the document for nlohmann's SAX parser, for three reasons the DOM parser cannot serve:
//  - depth: a body deeper than kMaxJsonDepth stops the parse at the first level too deep, so no
//    deep tree is ever built (the parser itself is iterative, but dump(), copies and comparisons of
//    the result would recurse once per level);
//  - keys: ordered_json's map is a vector searched linearly on every insert, so its own parser is
//    quadratic in the keys of an object (an 870 KB body of 80000 keys took 10 s, 8 MiB would take
//    many minutes); here duplicates are found through a hash map and keys are appended directly;
//  - errors: the path of the value being read ("messages[1].content") is known when the lexer
//    fails, which is how an invalid UTF-8 error names its field.
class BodyBuilder {
 public:
  explicit BodyBuilder(Json& root) : root_(root) {}

  bool null() { return value(Json(nullptr)); }
  bool boolean(bool v) { return value(Json(v)); }
  bool number_integer(Json::number_integer_t v) { return value(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) { return value(Json(v)); }
  bool number_float(Json::number_float_t v, const Json::string_t& /*text*/) { return value(Json(v)); }
  bool string(Json::string_t& s) { return value(Json(std::move(s))); }
  bool binary(Json::binary_t& b) { return value(Json::binary(std::move(b))); }
  bool start_object(std::size_t /*unknown*/) { return open(false); }
  bool start_array(std::size_t /*unknown*/) { return open(true); }
  bool key(Json::string_t& k) {
    Frame& f = stack_.back();
    f.key = std::move(k);
    f.has_key = true;
    return true;
  }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t /*position*/, const std::string& /*token*/, const Json::exception& e) {
    error_ = e.what();
    error_path_ = path();
    return false;
  }

  bool too_deep() const { return too_deep_; }
  const std::string& error() const { return error_; }
  const std::string& error_path() const { return error_path_; }

 private:
  struct Frame {
    Json* node;
    bool array;
    size_t count = 0;        // array: the elements done, so the index of the one being read
    bool has_key = false;    // object: a key was read and its value is being read
    std::string key;
    std::unordered_map<std::string, size_t> index;  // object: key -> position, for duplicates
  };

  // Where `v` goes: the root, the end of the open array, or the open object under the last key (a
  // duplicate key replaces the earlier value in its place, as nlohmann's own parser does).
  Json* insert(Json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& f = stack_.back();
    if (f.array) {
      auto& a = f.node->get_ref<Json::array_t&>();
      a.push_back(std::move(v));
      return &a.back();
    }
    auto& pairs = static_cast<Json::object_t::Container&>(f.node->get_ref<Json::object_t&>());
    const auto [it, fresh] = f.index.try_emplace(f.key, pairs.size());
    if (!fresh) {
      pairs[it->second].second = std::move(v);
      return &pairs[it->second].second;
    }
    pairs.emplace_back(f.key, std::move(v));
    return &pairs.back().second;
  }

  // A value of the open container is complete.
  void done() {
    if (stack_.empty()) return;
    Frame& f = stack_.back();
    if (f.array) ++f.count;
    else f.has_key = false;
  }

  bool value(Json&& v) {
    insert(std::move(v));
    done();
    return true;
  }

  bool open(bool array) {
    if (stack_.size() >= static_cast<size_t>(kMaxJsonDepth)) {
      too_deep_ = true;
      return false;
    }
    // The parent does not grow while this child is open, so the pointer stays valid.
    Json* node = insert(array ? Json::array() : Json::object());
    stack_.push_back(Frame{node, array, 0, false, {}, {}});
    return true;
  }

  bool close() {
    stack_.pop_back();
    done();
    return true;
  }

  std::string path() const {
    std::string p;
    for (const Frame& f : stack_) {
      if (f.array) {
        p += cat("[", f.count, "]");
      } else {
        if (!f.has_key) break;  // reading a key: the path is the object's own
        if (!p.empty()) p += '.';
        p += f.key;
      }
    }
    return p;
  }

  Json& root_;
  std::vector<Frame> stack_;
  bool too_deep_ = false;
  std::string error_, error_path_;
};

// nlohmann's message without its "[json.exception.parse_error.101] parse error at " preamble.
std::string json_message(std::string what) {
  if (what.starts_with("[json.exception.")) {
    if (const size_t p = what.find("] "); p != std::string::npos) what.erase(0, p + 2);
  }
  constexpr std::string_view kAt = "parse error at ";
  if (what.starts_with(kAt)) what.erase(0, kAt.size());
  return clip(what, 300);
}

}  // namespace

Json parse_json_body(std::string_view body) {
  Json root;
  BodyBuilder builder(root);
  const bool ok = Json::sax_parse(body.data(), body.data() + body.size(), &builder);
  if (builder.too_deep()) fail("", cat("the request body is nested more than ", kMaxJsonDepth, " levels deep"));
  if (ok) return root;
  // The lexer rejects ill-formed UTF-8 inside strings, and outside them any byte above 0x7F is a
  // syntax error; either way the client's problem is the encoding, so say that.
  const std::optional<size_t> bad = detail::find_invalid_utf8(body);
  const bool in_string = builder.error().find("ill-formed UTF-8") != std::string::npos;
  if (bad || in_string) {
    const std::string param = in_string ? builder.error_path() : "";
    std::string where = param.empty() ? "the request body" : cat("'", clip(param, 200), "'");
    if (bad) where += cat(" (at byte ", *bad, ")");
    fail(param, cat("invalid UTF-8 in ", where, ": the body must be UTF-8 encoded JSON"));
  }
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos)
    fail("", "the request body is empty: expected a JSON object");
  fail("", cat("the request body is not valid JSON: ", json_message(builder.error())));
}

namespace {

Json parse_object_body(std::string_view body) {
  Json j = parse_json_body(body);
  if (!j.is_object()) fail("", cat("the request body must be a JSON object, found ", found(j)));
  return j;
}

std::string content_text(const Json& c, const std::string& name) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) type_error(name, "a string or a list of content parts", c);
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const Json& part = c[i];
    const std::string pname = cat(name, "[", i, "]");
    if (!part.is_object()) type_error(pname, "an object ({\"type\": \"text\", \"text\": ...})", part);
    const std::string* type = opt_string(part, "type", pname);
    if (!type) fail(pname + ".type", cat("'", pname, ".type' is required"));
    if (*type != "text")
      fail(pname + ".type",
           cat("'", pname, ".type' is ", show(*type), ": only text content parts are supported"));
    const std::string* text = opt_string(part, "text", pname);
    if (!text) fail(pname + ".text", cat("'", pname, ".text' is required"));
    out += *text;
  }
  return out;
}

void check_tool_calls(const Json& calls, const std::string& name) {
  if (!calls.is_array()) type_error(name, "a list", calls);
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string cname = cat(name, "[", i, "]");
    const Json& call = calls[i];
    if (!call.is_object()) type_error(cname, "an object", call);
    // Templates read call.function.name and call.function.arguments: a string as OpenAI sends it, or
    // an object, which some clients send and templates such as Qwen's tojson.
    const Json* fn = field(call, "function");
    if (!fn) fail(cname + ".function", cat("'", cname, ".function' is required"));
    if (!fn->is_object()) type_error(cname + ".function", "an object", *fn);
    if (!opt_string(*fn, "name", cname + ".function"))
      fail(cname + ".function.name", cat("'", cname, ".function.name' is required"));
    if (const Json* args = field(*fn, "arguments"); args && !args->is_string() && !args->is_object())
      type_error(cname + ".function.arguments", "a string or an object", *args);
  }
}

ChatJson parse_message(const Json& m, const std::string& name) {
  if (!m.is_object()) type_error(name, "an object", m);
  const std::string* role = opt_string(m, "role", name);
  if (!role) fail(name + ".role", cat("'", name, ".role' is required"));
  static constexpr std::string_view kRoles[] = {"system", "developer", "user", "assistant", "tool"};
  bool known = false;
  for (const std::string_view r : kRoles) known = known || *role == r;
  if (!known)
    fail(name + ".role", cat("'", name, ".role' must be one of system, developer, user, assistant, tool; found ",
                             show(*role)));
  ChatJson out = ChatJson::object();
  out["role"] = *role;
  const Json* tool_calls = field(m, "tool_calls");
  if (tool_calls) check_tool_calls(*tool_calls, name + ".tool_calls");
  if (const Json* content = field(m, "content")) {
    out["content"] = content_text(*content, name + ".content");
  } else if (*role == "assistant" && tool_calls) {
    out["content"] = "";
  } else {
    fail(name + ".content", cat("'", name, ".content' is required",
                                *role == "assistant" ? " (it may be null only with tool_calls)" : ""));
  }
  if (const std::string* n = opt_string(m, "name", name)) out["name"] = *n;
  if (tool_calls) out["tool_calls"] = *tool_calls;
  if (const std::string* id = opt_string(m, "tool_call_id", name)) out["tool_call_id"] = *id;
  // reasoning_content (an earlier answer's thinking, which clients echo back) is dropped: templates
  // that want it strip it themselves, and the others would render it into the prompt.
  return out;
}

void parse_tools(const Json& body, CompletionRequest& r) {
  const Json* tools = field(body, "tools");
  if (tools) {
    if (!tools->is_array()) type_error("tools", "a list", *tools);
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string tname = cat("tools[", i, "]");
      const Json& t = (*tools)[i];
      if (!t.is_object()) type_error(tname, "an object", t);
      if (const std::string* type = opt_string(t, "type", tname); type && *type != "function")
        fail(tname + ".type", cat("'", tname, ".type' is ", show(*type), ": only \"function\" tools are supported"));
      const Json* fn = field(t, "function");
      if (!fn) fail(tname + ".function", cat("'", tname, ".function' is required"));
      if (!fn->is_object()) type_error(tname + ".function", "an object", *fn);
      if (!opt_string(*fn, "name", tname + ".function"))
        fail(tname + ".function.name", cat("'", tname, ".function.name' is required"));
    }
  }
  bool none = false;
  if (const Json* choice = field(body, "tool_choice")) {
    if (choice->is_string()) {
      const std::string& c = choice->get_ref<const std::string&>();
      if (c == "required")
        fail("tool_choice", "'tool_choice' \"required\" is not supported: tools are offered to the model, "
                            "which may or may not call them (use \"auto\")");
      if (c != "auto" && c != "none")
        fail("tool_choice", cat("'tool_choice' must be \"auto\" or \"none\", found ", show(c)));
      none = c == "none";
    } else if (choice->is_object()) {
      fail("tool_choice", "'tool_choice' naming a function is not supported: calls cannot be forced (use \"auto\")");
    } else {
      type_error("tool_choice", "a string", *choice);
    }
  }
  if (tools && !tools->empty() && !none) r.tools = *tools;
}

void parse_stop(const Json& body, CompletionRequest& r) {
  const Json* stop = field(body, "stop");
  if (!stop) return;
  const auto check = [](const Json& s, const std::string& name) {
    if (!s.is_string()) type_error(name, "a string", s);
    const std::string& v = s.get_ref<const std::string&>();
    if (v.empty()) fail(name, cat("'", name, "' must not be empty"));
    if (v.size() > kMaxStopBytes)
      fail(name, cat("'", name, "' is ", v.size(), " bytes, more than the ", kMaxStopBytes, " a stop string may have"));
    return v;
  };
  if (stop->is_string()) {
    r.stop.push_back(check(*stop, "stop"));
    return;
  }
  if (!stop->is_array()) type_error("stop", "a string or a list of strings", *stop);
  if (stop->size() > kMaxStopStrings)
    fail("stop", cat("'stop' has ", stop->size(), " strings, more than the ", kMaxStopStrings, " supported"));
  for (size_t i = 0; i < stop->size(); ++i) r.stop.push_back(check((*stop)[i], cat("stop[", i, "]")));
}

// The fields /v1/chat/completions and /v1/completions share.
void parse_common(const Json& body, CompletionRequest& r) {
  if (const std::string* model = opt_string(body, "model")) r.model = *model;
  r.stream = opt_bool(body, "stream").value_or(false);
  if (const Json* so = field(body, "stream_options")) {
    if (!so->is_object()) type_error("stream_options", "an object", *so);
    // Accepted without "stream" (OpenAI refuses it) and ignored there: there is no stream to end.
    const bool usage = opt_bool(*so, "include_usage", "stream_options").value_or(false);
    r.include_usage = r.stream && usage;
  }
  (void)opt_integer(body, "n", 1, 1, "1 (one choice per request is supported)");

  constexpr int64_t kMax64 = std::numeric_limits<int64_t>::max();
  const auto max_tokens = opt_integer(body, "max_tokens", 1, kMax64, "an integer >= 1");
  const auto max_completion = opt_integer(body, "max_completion_tokens", 1, kMax64, "an integer >= 1");
  r.max_tokens = max_completion ? max_completion : max_tokens;

  r.temperature = opt_float(body, "temperature", [](float v) { return v >= 0; }, "a number >= 0");
  r.top_p = opt_float(body, "top_p", [](float v) { return v > 0 && v <= 1; }, "a number in (0, 1]");
  r.min_p = opt_float(body, "min_p", [](float v) { return v >= 0 && v <= 1; }, "a number in [0, 1]");
  r.presence_penalty = opt_float(body, "presence_penalty", [](float v) { return v >= -2 && v <= 2; }, "a number in [-2, 2]");
  r.frequency_penalty = opt_float(body, "frequency_penalty", [](float v) { return v >= -2 && v <= 2; }, "a number in [-2, 2]");
  r.repetition_penalty = opt_float(body, "repetition_penalty", [](float v) { return v > 0; }, "a number > 0");
  // llama-server treats top_k <= 0 as off; -1 is what some clients send for that.
  if (const auto k = opt_integer(body, "top_k", -1, std::numeric_limits<int32_t>::max(),
                                 cat("an integer from -1 (off) to ", std::numeric_limits<int32_t>::max())))
    r.top_k = static_cast<int32_t>(std::max<int64_t>(*k, 0));

  if (const Json* seed = field(body, "seed")) {
    const char* kSeed = "an integer from 0 to 18446744073709551615 (for a random seed leave 'seed' out; -1 is not taken)";
    if (seed->is_number_unsigned()) {
      r.seed = seed->get<uint64_t>();
    } else if (seed->is_number_integer()) {
      range_error("seed", kSeed, *seed);  // nlohmann keeps non-negative integers unsigned: this is < 0
    } else if (seed->is_number_float()) {
      const double d = seed->get<double>();
      if (d != std::trunc(d)) fail("seed", cat("'seed' must be an integer, found ", number_text(*seed)));
      if (!(d >= 0 && d < 18446744073709551616.0)) range_error("seed", kSeed, *seed);
      r.seed = static_cast<uint64_t>(d);
    } else {
      type_error("seed", "an integer", *seed);
    }
  }
  parse_stop(body, r);

  if (const Json* rf = field(body, "response_format")) {
    if (!rf->is_object()) type_error("response_format", "an object", *rf);
    const std::string* type = opt_string(*rf, "type", "response_format");
    if (type && *type != "text")
      fail("response_format.type", cat("'response_format.type' ", show(*type),
                                       " is not supported: output is not constrained (only \"text\" is)"));
  }
}

}  // namespace

Json error_body(const ApiError& e) {
  Json inner = Json::object();
  inner["message"] = clip(e.message, std::string::npos);
  inner["type"] = clip(e.type, std::string::npos);
  inner["param"] = e.param.empty() ? Json(nullptr) : Json(clip(e.param, std::string::npos));
  inner["code"] = e.code.empty() ? Json(nullptr) : Json(clip(e.code, std::string::npos));
  Json out = Json::object();
  out["error"] = std::move(inner);
  return out;
}

CompletionRequest parse_chat_request(std::string_view body) {
  const Json j = parse_object_body(body);
  CompletionRequest r;
  r.chat = true;
  const Json* messages = field(j, "messages");
  if (!messages) fail("messages", "'messages' is required");
  if (!messages->is_array()) type_error("messages", "a list of messages", *messages);
  if (messages->empty()) fail("messages", "'messages' must not be empty");
  for (size_t i = 0; i < messages->size(); ++i) r.messages.push_back(parse_message((*messages)[i], cat("messages[", i, "]")));

  if (const std::optional<bool> lp = opt_bool(j, "logprobs"); lp && *lp)
    fail("logprobs", "'logprobs' is not supported");
  parse_tools(j, r);
  if (const Json* kw = field(j, "chat_template_kwargs")) {
    if (!kw->is_object()) type_error("chat_template_kwargs", "an object", *kw);
    r.chat_template_kwargs = *kw;
  }
  parse_common(j, r);
  return r;
}

CompletionRequest parse_completion_request(std::string_view body) {
  const Json j = parse_object_body(body);
  CompletionRequest r;
  r.chat = false;
  const Json* prompt = field(j, "prompt");
  if (!prompt) fail("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    r.prompt = prompt->get<std::string>();
  } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    r.prompt = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array()) {
    fail("prompt", cat("'prompt' must be a string or a list of one string (only one string prompt is supported; "
                       "token ids are not), found a list of ", prompt->size(),
                       prompt->empty() ? "" : cat(", the first ", found((*prompt)[0]))));
  } else {
    type_error("prompt", "a string", *prompt);
  }
  // Legacy completions' logprobs is a count: any count asks for what is not produced.
  if (const Json* lp = field(j, "logprobs")) {
    if (lp->is_boolean()) {
      if (lp->get<bool>()) fail("logprobs", "'logprobs' is not supported");
    } else if (lp->is_number()) {
      fail("logprobs", "'logprobs' is not supported");
    } else {
      type_error("logprobs", "an integer", *lp);
    }
  }
  if (opt_bool(j, "echo").value_or(false)) fail("echo", "'echo' is not supported");
  (void)opt_integer(j, "best_of", 1, 1, "1 (one choice per request is supported)");
  if (const std::string* suffix = opt_string(j, "suffix"); suffix && !suffix->empty())
    fail("suffix", "'suffix' is not supported");
  parse_common(j, r);
  return r;
}

SamplerParams sampler_params(const CompletionRequest& r, const SamplerParams& defaults) {
  SamplerParams p = defaults;
  if (r.temperature) p.temperature = *r.temperature;
  if (r.top_k) p.top_k = *r.top_k;
  if (r.top_p) p.top_p = *r.top_p;
  if (r.min_p) p.min_p = *r.min_p;
  if (r.repetition_penalty) p.repeat_penalty = *r.repetition_penalty;
  if (r.presence_penalty) p.presence_penalty = *r.presence_penalty;
  if (r.frequency_penalty) p.frequency_penalty = *r.frequency_penalty;
  if (r.seed) p.seed = *r.seed;
  return p;
}

TokenizeRequest parse_tokenize_request(std::string_view body) {
  const Json j = parse_object_body(body);
  TokenizeRequest r;
  const std::string* content = opt_string(j, "content");
  if (!content) fail("content", "'content' is required");
  r.content = *content;
  r.add_special = opt_bool(j, "add_special").value_or(false);
  r.with_pieces = opt_bool(j, "with_pieces").value_or(false);
  return r;
}

std::vector<int32_t> parse_detokenize_request(std::string_view body) {
  const Json j = parse_object_body(body);
  const Json* tokens = field(j, "tokens");
  if (!tokens) fail("tokens", "'tokens' is required");
  if (!tokens->is_array()) type_error("tokens", "a list of token ids", *tokens);
  if (tokens->size() > kMaxDetokenizeTokens)
    fail("tokens", cat("'tokens' has ", tokens->size(), " ids, more than the ", kMaxDetokenizeTokens, " supported"));
  std::vector<int32_t> ids;
  ids.reserve(tokens->size());
  const std::string expected = cat("a token id (an integer from 0 to ", std::numeric_limits<int32_t>::max(), ")");
  constexpr int32_t kMaxId = std::numeric_limits<int32_t>::max();
  for (size_t i = 0; i < tokens->size(); ++i) {
    const Json& t = (*tokens)[i];
    // The common case without building a field name per id (a million of them is a valid body).
    if (t.is_number_unsigned() && t.get<uint64_t>() <= static_cast<uint64_t>(kMaxId)) {
      ids.push_back(static_cast<int32_t>(t.get<uint64_t>()));
      continue;
    }
    ids.push_back(static_cast<int32_t>(integer_in(t, cat("tokens[", i, "]"), 0, kMaxId, expected)));
  }
  return ids;
}

// --- responses ------------------------------------------------------------------------------------

namespace {

// What we emit is valid UTF-8 already (the stream decoder sees to it); this makes sure a slip can
// only cost a U+FFFD, never a dump() that throws mid-response.
std::string text(std::string_view s) { return detail::is_valid_utf8(s) ? std::string(s) : detail::utf8_lossy(s); }

Json header(const std::string& id, const char* object, int64_t created, const std::string& model) {
  Json j = Json::object();
  j["id"] = text(id);
  j["object"] = object;
  j["created"] = created;
  j["model"] = text(model);
  return j;
}

Json one(Json choice) {
  Json list = Json::array();
  list.push_back(std::move(choice));
  return list;
}

}  // namespace

Json usage_json(const Usage& u) {
  Json j = Json::object();
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  Json details = Json::object();
  details["cached_tokens"] = u.cached_tokens;
  j["prompt_tokens_details"] = std::move(details);
  return j;
}

std::string finish_reason(std::string_view reason) {
  if (reason == "length" || reason == "context") return "length";
  return "stop";  // eos, stop, and an end the client caused or will not see (cancelled, interrupted)
}

Json chat_response(const std::string& id, const std::string& model, int64_t created, const std::string& content,
                   const std::string& reasoning, const std::string& finish, const Usage& usage) {
  Json message = Json::object();
  message["role"] = "assistant";
  message["content"] = text(content);
  if (!reasoning.empty()) message["reasoning_content"] = text(reasoning);
  Json choice = Json::object();
  choice["index"] = 0;
  choice["message"] = std::move(message);
  choice["finish_reason"] = text(finish);
  choice["logprobs"] = nullptr;
  Json j = header(id, "chat.completion", created, model);
  j["choices"] = one(std::move(choice));
  j["usage"] = usage_json(usage);
  return j;
}

Json completion_response(const std::string& id, const std::string& model, int64_t created, const std::string& text_,
                         const std::string& finish, const Usage& usage) {
  Json choice = Json::object();
  choice["index"] = 0;
  choice["text"] = text(text_);
  choice["finish_reason"] = text(finish);
  choice["logprobs"] = nullptr;
  Json j = header(id, "text_completion", created, model);
  j["choices"] = one(std::move(choice));
  j["usage"] = usage_json(usage);
  return j;
}

namespace {

// A stream chunk around `choice` (index and delta or text set): the usage-only chunk when the delta
// carries the usage (include_usage: no choices), else the choice with its finish_reason.
Json chunk_of(const char* object, const std::string& id, const std::string& model, int64_t created, const ChunkDelta& d,
              Json choice) {
  Json j = header(id, object, created, model);
  if (d.usage) {
    j["choices"] = Json::array();
    j["usage"] = usage_json(*d.usage);
    return j;
  }
  choice["finish_reason"] = d.finish ? Json(text(*d.finish)) : Json(nullptr);
  choice["logprobs"] = nullptr;
  j["choices"] = one(std::move(choice));
  return j;
}

}  // namespace

Json chat_chunk(const std::string& id, const std::string& model, int64_t created, const ChunkDelta& d) {
  Json delta = Json::object();
  if (d.role) delta["role"] = "assistant";
  if (d.role || d.content) delta["content"] = d.content ? text(*d.content) : std::string();
  if (d.reasoning) delta["reasoning_content"] = text(*d.reasoning);
  Json choice = Json::object();
  choice["index"] = 0;
  choice["delta"] = std::move(delta);
  return chunk_of("chat.completion.chunk", id, model, created, d, std::move(choice));
}

Json completion_chunk(const std::string& id, const std::string& model, int64_t created, const ChunkDelta& d) {
  Json choice = Json::object();
  choice["index"] = 0;
  choice["text"] = text(d.reasoning.value_or("") + d.content.value_or(""));
  return chunk_of("text_completion", id, model, created, d, std::move(choice));
}

std::string sse_event(const Json& j) {
  return cat("data: ", j.dump(-1, ' ', false, Json::error_handler_t::replace), "\n\n");
}

// --- reasoning ------------------------------------------------------------------------------------

namespace {

constexpr std::string_view kOpen = "<think>", kClose = "</think>";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

// The longest suffix of `s` that is a proper prefix of `tag`: what may yet become the tag.
size_t partial_tag(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

}  // namespace

ReasoningSplitter::ReasoningSplitter(bool starts_thinking) : state_(starts_thinking ? State::opened : State::start) {}

ReasoningSplitter::Piece ReasoningSplitter::push(std::string_view piece) {
  Piece out;
  // In the start state held_ is whitespace and then at most a proper prefix of "<think>", so the
  // first other byte is among its last few: resuming the scan there keeps a model that streams
  // many newlines first from rescanning them on every push.
  const size_t resume = held_.size() > kOpen.size() ? held_.size() - kOpen.size() : 0;
  held_.append(piece);
  std::string_view rest = held_;
  for (;;) {
    switch (state_) {
      case State::start: {
        const size_t i = skip_space(rest, resume);
        const std::string_view tail = rest.substr(i);
        if (tail.starts_with(kOpen)) {
          rest.remove_prefix(i + kOpen.size());
          state_ = State::opened;
        } else if (kOpen.starts_with(tail)) {
          return out;  // all whitespace so far, or a tag not yet complete: all of held_ stays
        } else {
          state_ = State::answer;  // the held whitespace is the answer's
        }
        break;
      }
      case State::opened:
      case State::after:
        rest.remove_prefix(skip_space(rest, 0));
        if (rest.empty()) {
          held_.clear();
          return out;
        }
        state_ = state_ == State::opened ? State::thinking : State::answer;
        break;
      case State::thinking: {
        if (const size_t end = rest.find(kClose); end != std::string_view::npos) {
          out.reasoning.append(rest.substr(0, end));
          rest.remove_prefix(end + kClose.size());
          state_ = State::after;
          break;
        }
        const size_t keep = partial_tag(rest, kClose);
        out.reasoning.append(rest.substr(0, rest.size() - keep));
        held_ = std::string(rest.substr(rest.size() - keep));  // a copy first: rest views held_
        return out;
      }
      case State::answer:
        out.content.append(rest);
        held_.clear();
        return out;
    }
  }
}

ReasoningSplitter::Piece ReasoningSplitter::flush() {
  Piece out;
  if (state_ == State::start) {
    out.content = std::move(held_);  // whitespace, or a "<think>" that never completed
    state_ = State::answer;
  } else if (state_ == State::thinking) {
    out.reasoning = std::move(held_);  // a "</think>" that never completed
  }
  held_.clear();
  return out;
}

bool template_has_reasoning(std::string_view template_source) {
  return template_source.find(kOpen) != std::string_view::npos;
}

bool prompt_opens_reasoning(std::string_view rendered_prompt) {
  size_t end = rendered_prompt.size();
  while (end > 0 && is_space(rendered_prompt[end - 1])) --end;
  return rendered_prompt.substr(0, end).ends_with(kOpen);
}

}  // namespace moerun::serve
