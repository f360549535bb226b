// libFuzzer target for moerun serve's wire format (src/serve/api.cpp): any byte string as the body of
// every request kind. A RequestError is the expected answer to a bad body; anything else that escapes
// -- another exception, a crash, a sanitizer report -- is a finding, and so is:
//  - an error that is not a 400 with a valid UTF-8 message, or whose body cannot be dumped;
//  - a parse that disagrees with nlohmann's own parser on whether the body is JSON at all, or on the
//    document it read, key order and duplicate keys included (the parser here builds its document
//    itself, see BodyBuilder in api.cpp);
//  - an accepted request breaking its documented ranges, or holding anything dump() rejects (it
//    rejects invalid UTF-8);
//  - a response or stream chunk built from an accepted request that does not dump;
//  - the ReasoningSplitter, given the bytes in two or three pieces, disagreeing with a one-pass
//    reference of its documented rules (split_whole below), with or without starts_thinking.
// Built only with clang (-DMOERUN_FUZZ=ON); scripts/fuzz.sh runs it with serve_request.dict over
// corpus-serve/.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "serve/api.h"
#include "util/utf8.h"

namespace {

namespace api = moerun::serve;
using api::Json;

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "serve_request_fuzz: %s\n", what);
  std::abort();
}

void check(bool ok, const char* what) {
  if (!ok) finding(what);
}

// dump() with the strict handler throws on invalid UTF-8: a document that dumps is valid UTF-8.
std::string dumps(const Json& j, const char* what) {
  try {
    return j.dump();
  } catch (const Json::exception&) {
    finding(what);
  }
}

// Whether the error says the body is not JSON at all (as opposed to JSON the API refuses).
bool not_json(const api::ApiError& e) {
  const std::string& m = e.message;
  return m.starts_with("the request body is not valid JSON") || m.starts_with("invalid UTF-8") ||
         m.starts_with("the request body is empty");
}

void check_error(const api::RequestError& err, std::string_view body) {
  const api::ApiError& e = err.error();
  check(e.status == 400, "a request error that is not a 400");
  check(e.type == "invalid_request_error", "a request error of another type");
  check(!e.message.empty(), "an empty error message");
  check(moerun::detail::is_valid_utf8(e.message) && moerun::detail::is_valid_utf8(e.param),
        "an error message or param that is not valid UTF-8");
  (void)dumps(api::error_body(e), "error_body does not dump");
  if (e.message.starts_with("the request body is nested more than")) return;  // nlohmann would build it
  // nlohmann's DOM parser (depth aside, which it does not limit) is the reference for what is JSON.
  check(not_json(e) != nlohmann::json::accept(body), "the body parser disagrees with nlohmann on what is JSON");
}

void check_request(const api::CompletionRequest& r, std::string_view body) {
  check(moerun::detail::is_valid_utf8(body), "a body with invalid UTF-8 was accepted");
  check(nlohmann::json::accept(body), "a body nlohmann rejects was accepted");
  check(!r.max_tokens || *r.max_tokens >= 1, "max_tokens < 1");
  check(!r.temperature || (std::isfinite(*r.temperature) && *r.temperature >= 0), "temperature out of range");
  check(!r.top_p || (*r.top_p > 0 && *r.top_p <= 1), "top_p out of range");
  check(!r.top_k || *r.top_k >= 0, "top_k < 0");
  check(!r.min_p || (*r.min_p >= 0 && *r.min_p <= 1), "min_p out of range");
  check(!r.presence_penalty || std::fabs(*r.presence_penalty) <= 2, "presence_penalty out of range");
  check(!r.frequency_penalty || std::fabs(*r.frequency_penalty) <= 2, "frequency_penalty out of range");
  check(!r.repetition_penalty || (std::isfinite(*r.repetition_penalty) && *r.repetition_penalty > 0),
        "repetition_penalty out of range");
  check(r.include_usage <= r.stream, "include_usage without stream");
  check(r.stop.size() <= api::kMaxStopStrings, "too many stop strings");
  for (const std::string& s : r.stop)
    check(!s.empty() && s.size() <= api::kMaxStopBytes && moerun::detail::is_valid_utf8(s), "a bad stop string");
  check(moerun::detail::is_valid_utf8(r.model) && moerun::detail::is_valid_utf8(r.prompt), "invalid UTF-8 accepted");
  if (r.chat) {
    check(r.messages.is_array() && !r.messages.empty(), "chat messages empty");
    for (const moerun::ChatJson& m : r.messages) {
      check(m.is_object() && m.contains("role") && m["role"].is_string(), "a message without a string role");
      check(m.contains("content") && m["content"].is_string(), "a message without string content");
      check(!m.contains("reasoning_content"), "reasoning_content kept");
    }
    (void)dumps(r.messages, "messages do not dump");
    check(r.chat_template_kwargs.is_object(), "chat_template_kwargs not an object");
    (void)dumps(r.chat_template_kwargs, "chat_template_kwargs do not dump");
    check(r.tools.is_null() || (r.tools.is_array() && !r.tools.empty()), "tools neither null nor a list");
    // The document built here against nlohmann's own (key order and duplicates included).
    const Json reference = Json::parse(body);
    const auto kw = reference.find("chat_template_kwargs");
    if (kw != reference.end() && !kw->is_null()) check(*kw == r.chat_template_kwargs, "chat_template_kwargs differ from nlohmann's parse");
    const auto tools = reference.find("tools");
    if (!r.tools.is_null()) check(tools != reference.end() && *tools == r.tools, "tools differ from nlohmann's parse");
  }

  moerun::SamplerParams defaults;
  defaults.seed = 5;
  const moerun::SamplerParams p = api::sampler_params(r, defaults);
  check(p.seed == r.seed.value_or(5), "sampler_params lost the seed");
  check(p.top_k >= 0 && p.top_p > 0 && p.top_p <= 1 && p.repeat_penalty > 0, "sampler_params out of range");

  // Responses from what the request carried: the model echoed back, some content.
  const std::string content = r.chat ? r.messages.back()["content"].get<std::string>() : r.prompt;
  const std::string reasoning = r.stop.empty() ? std::string() : r.stop.front();
  const std::string finish = api::finish_reason(r.stop.empty() ? "length" : "stop");
  const api::Usage usage{static_cast<int64_t>(content.size()), r.max_tokens.value_or(0), 0};
  (void)dumps(api::chat_response("chatcmpl-x", r.model, 1, content, reasoning, finish, usage), "chat_response does not dump");
  (void)dumps(api::completion_response("cmpl-x", r.model, 1, content, finish, usage), "completion_response does not dump");
  api::ChunkDelta d;
  d.role = r.stream;
  d.content = content;
  if (!reasoning.empty()) d.reasoning = reasoning;
  const std::string event = api::sse_event(api::chat_chunk("c", r.model, 1, d));
  check(event.starts_with("data: {") && event.ends_with("}\n\n"), "a malformed SSE event");
  d.finish = finish;
  (void)dumps(api::completion_chunk("c", r.model, 1, d), "completion_chunk does not dump");
  if (r.include_usage) {
    api::ChunkDelta u;
    u.usage = usage;
    const Json chunk = api::chat_chunk("c", r.model, 1, u);
    check(chunk["choices"].empty() && chunk["usage"]["total_tokens"].is_number_integer(), "a bad usage chunk");
  }
}

// --- the reasoning splitter against a one-pass reference -------------------------------------------

struct Split {
  std::string reasoning, content;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  return i;
}

// The rules of api.h on the whole text at once: without starts_thinking, an opening <think> only
// right at the start (whitespace aside), else all of it is the answer; whitespace after <think> and
// after </think> is dropped; an unclosed section is all reasoning.
Split split_whole(std::string_view text, bool starts_thinking) {
  size_t at = 0;
  if (!starts_thinking) {
    const size_t i = skip_space(text, 0);
    if (!text.substr(i).starts_with("<think>")) return {"", std::string(text)};
    at = i + 7;
  }
  at = skip_space(text, at);
  const size_t end = text.find("</think>", at);
  if (end == std::string_view::npos) return {std::string(text.substr(at)), ""};
  return {std::string(text.substr(at, end - at)), std::string(text.substr(skip_space(text, end + 8)))};
}

Split split_pieces(const std::vector<std::string_view>& pieces, bool starts_thinking) {
  api::ReasoningSplitter s(starts_thinking);
  Split out;
  for (const std::string_view p : pieces) {
    const api::ReasoningSplitter::Piece got = s.push(p);
    out.reasoning += got.reasoning;
    out.content += got.content;
  }
  const api::ReasoningSplitter::Piece rest = s.flush();
  out.reasoning += rest.reasoning;
  out.content += rest.content;
  return out;
}

void check_splitter(std::string_view text) {
  // Cut points taken from the bytes themselves, so the fuzzer steers them.
  const size_t n = text.size();
  const size_t a = n ? static_cast<unsigned char>(text[0]) * 31u % (n + 1) : 0;
  const size_t b = n ? static_cast<unsigned char>(text[n - 1]) * 17u % (n + 1) : 0;
  const size_t lo = a < b ? a : b, hi = a < b ? b : a;
  for (const bool starts_thinking : {false, true}) {
    const Split expected = split_whole(text, starts_thinking);
    for (const std::vector<std::string_view>& pieces :
         {std::vector<std::string_view>{text}, std::vector<std::string_view>{text.substr(0, a), text.substr(a)},
          std::vector<std::string_view>{text.substr(0, lo), text.substr(lo, hi - lo), text.substr(hi)}}) {
      const Split got = split_pieces(pieces, starts_thinking);
      check(got.reasoning == expected.reasoning, "ReasoningSplitter reasoning differs from the reference");
      check(got.content == expected.content, "ReasoningSplitter content differs from the reference");
    }
    check(expected.reasoning.size() + expected.content.size() <= n, "the splitter added text");
  }
  size_t end = n;
  while (end > 0 && is_space(text[end - 1])) --end;
  check(api::prompt_opens_reasoning(text) == text.substr(0, end).ends_with("<think>"), "prompt_opens_reasoning");
  check(api::template_has_reasoning(text) == (text.find("<think>") != std::string_view::npos), "template_has_reasoning");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);

  // The document, against nlohmann's own parser: same value, same key order, same duplicates rule.
  try {
    const Json doc = api::parse_json_body(body);
    check(Json::accept(body), "parse_json_body accepted what nlohmann rejects");
    check(doc == Json::parse(body), "parse_json_body differs from nlohmann's parse");
    (void)dumps(doc, "a parsed body does not dump");
  } catch (const api::RequestError& e) {
    check_error(e, body);
  }

  try {
    check_request(api::parse_chat_request(body), body);
  } catch (const api::RequestError& e) {
    check_error(e, body);
  }
  try {
    const api::CompletionRequest r = api::parse_completion_request(body);
    check(!r.chat, "a completion request marked chat");
    check_request(r, body);
  } catch (const api::RequestError& e) {
    check_error(e, body);
  }
  try {
    const api::TokenizeRequest t = api::parse_tokenize_request(body);
    check(moerun::detail::is_valid_utf8(t.content), "tokenize content is not valid UTF-8");
  } catch (const api::RequestError& e) {
    check_error(e, body);
  }
  try {
    const std::vector<int32_t> ids = api::parse_detokenize_request(body);
    check(ids.size() <= api::kMaxDetokenizeTokens, "too many ids accepted");
    for (const int32_t id : ids) check(id >= 0, "a negative id accepted");
  } catch (const api::RequestError& e) {
    check_error(e, body);
  }

  check_splitter(body);
  return 0;
}
