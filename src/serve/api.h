#pragma once
// The OpenAI-compatible wire format of `moerun serve`: request bodies parsed and validated into plain
// structs, responses and stream chunks built as JSON, errors shaped as OpenAI's
// ({"error": {"message", "type", "param", "code"}}) with their HTTP status. No HTTP and no model
// here: the server (server.cpp) moves bytes, the scheduler (scheduler.h) runs the model, and this
// file is what a fuzzer can reach with arbitrary bytes (tests/fuzz/serve_request_fuzz.cpp).
//
// Requests are untrusted (docs/DESIGN.md "Trust boundaries"): every field is type-checked, numbers
// range-checked, strings must be valid UTF-8, sizes are bounded, and a problem is a RequestError
// whose message names the field ("messages[2].content", "stop[1]", "temperature").

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/chat_template.h"  // ChatJson (nlohmann::ordered_json)
#include "moerun/sampler.h"

namespace moerun::serve {

using Json = nlohmann::ordered_json;

// An error as the client receives it.
struct ApiError {
  int status = 400;                           // HTTP status
  std::string message;
  std::string type = "invalid_request_error"; // OpenAI's: invalid_request_error, authentication_error,
                                              // not_found_error, server_error; ours: unavailable_error (503)
  std::string param;                          // the offending field ("" -> null)
  std::string code;                           // "context_length_exceeded", "invalid_api_key", ... ("" -> null)
};
// {"error": {"message": ..., "type": ..., "param": ... | null, "code": ... | null}}
Json error_body(const ApiError& e);

// Thrown by the parsers; carries what the client gets.
class RequestError : public std::exception {
 public:
  explicit RequestError(ApiError e) : error_(std::move(e)) {}
  const ApiError& error() const noexcept { return error_; }
  const char* what() const noexcept override { return error_.message.c_str(); }

 private:
  ApiError error_;
};

// Largest accepted request body (413 past it) unless the server is told otherwise.
inline constexpr size_t kDefaultMaxBodyBytes = size_t{8} << 20;
inline constexpr size_t kMaxStopStrings = 16;     // "stop": at most this many
inline constexpr size_t kMaxStopBytes = 1024;     // each at most this long
// Deeper bodies are refused (400) while they are parsed, before anything recurses over them (a body
// of 100000 '[' would otherwise overflow the stack of whatever walks or dumps it).
inline constexpr int kMaxJsonDepth = 64;
inline constexpr size_t kMaxDetokenizeTokens = 1'000'000;  // POST /detokenize: at most this many ids

// A /v1/chat/completions or /v1/completions request, validated. Unset optionals take the server's
// defaults (its flags and generation_config.json).
struct CompletionRequest {
  bool chat = true;             // /v1/chat/completions (messages) or /v1/completions (prompt)
  std::string model;            // echoed back; any value is accepted (one model per server)
  // chat: the messages as the chat template takes them: a list of objects, each with a string
  // "role" (system, user, assistant, tool, developer) and "content" either a string or a list of
  // {"type": "text", "text": ...} parts, which are joined into one string here (other part types:
  // 400 naming the part); assistant messages may carry "reasoning_content" (dropped) and
  // "tool_calls" (kept). Empty list: 400.
  ChatJson messages = ChatJson::array();
  std::string prompt;           // completions: the raw prompt (a string, or a list of one string)
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  std::optional<int64_t> max_tokens;  // max_completion_tokens wins over max_tokens; >= 1
  std::optional<float> temperature;   // [0, 2]... any finite >= 0 accepted
  std::optional<float> top_p;         // (0, 1]
  std::optional<int32_t> top_k;       // >= 0 (0: off)
  std::optional<float> min_p;         // [0, 1]
  std::optional<float> presence_penalty, frequency_penalty;  // [-2, 2]
  std::optional<float> repetition_penalty;                    // > 0
  std::optional<uint64_t> seed;       // integer >= 0 (negative: 400)
  std::vector<std::string> stop;      // a string or a list of strings (non-empty, valid UTF-8)
  // Template switches some reasoning models read (Qwen3's enable_thinking), passed to the template
  // as kwargs: chat_template_kwargs (an object), as vLLM and llama-server accept it.
  ChatJson chat_template_kwargs = ChatJson::object();
  // chat: "tools" (a list of {"type": "function", "function": {"name", ...}}) for ChatOptions::tools;
  // null when absent, empty or tool_choice is "none".
  ChatJson tools = nullptr;
};

// A body as JSON, within the limits above: RequestError (400) when it is not JSON, not UTF-8 ("invalid
// UTF-8", param the field whose string holds it when known) or nested deeper than kMaxJsonDepth. Any
// JSON value is returned (the parsers below want an object). Parsing is linear in the body, which
// ordered_json's own parse() is not (it is quadratic in the keys of an object).
Json parse_json_body(std::string_view body);

// Parse and validate a body. Throw RequestError (status 400) for: a body that is not JSON or not an
// object ("the request body is not valid JSON: ..." / "must be a JSON object"), invalid UTF-8
// anywhere (message says "invalid UTF-8", param the field when known), a missing required field
// (messages / prompt), a field of the wrong type (message names the field and both types), a
// number out of range, n other than 1 ("param": "n"), unknown roles, empty messages. Unknown
// top-level fields are ignored (clients send many: user, logprobs false, response_format text...),
// except logprobs true / tools with tool_choice "required" which are 400 (not supported).
CompletionRequest parse_chat_request(std::string_view body);
CompletionRequest parse_completion_request(std::string_view body);

// The server's sampling defaults with the request's fields on top.
SamplerParams sampler_params(const CompletionRequest& r, const SamplerParams& defaults);

// POST /tokenize {"content": string, "add_special": bool = false, "with_pieces": bool = false}
struct TokenizeRequest {
  std::string content;
  bool add_special = false;
  bool with_pieces = false;  // answer [{"id": n, "piece": "text"}, ...] instead of [n, ...]
};
TokenizeRequest parse_tokenize_request(std::string_view body);
// POST /detokenize {"tokens": [int, ...]} (ids checked against the vocabulary by the server)
std::vector<int32_t> parse_detokenize_request(std::string_view body);

// --- responses --------------------------------------------------------------------------------

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;  // cached: prompt tokens reused
};
Json usage_json(const Usage& u);  // {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details": {"cached_tokens"}}

// The OpenAI finish_reason of a generate()-style reason: eos/stop -> "stop", length/context ->
// "length", anything else (cancelled, interrupted) -> "stop".
std::string finish_reason(std::string_view reason);

// Non-streamed answers. `reasoning`: empty -> no reasoning_content field.
Json chat_response(const std::string& id, const std::string& model, int64_t created, const std::string& content,
                   const std::string& reasoning, const std::string& finish, const Usage& usage);
Json completion_response(const std::string& id, const std::string& model, int64_t created, const std::string& text,
                         const std::string& finish, const Usage& usage);

// One stream chunk ("object": "chat.completion.chunk" / "text_completion"). Chat: the first chunk
// carries delta {"role": "assistant", "content": ""}; later ones delta {"content": ...} or
// {"reasoning_content": ...}; the last one delta {} and the finish_reason. `usage` set: the
// include_usage chunk (empty "choices", the usage). Which of these a call builds:
struct ChunkDelta {
  bool role = false;                  // the first chunk
  std::optional<std::string> content = std::nullopt, reasoning = std::nullopt;
  std::optional<std::string> finish = std::nullopt;  // the last chunk
  std::optional<Usage> usage = std::nullopt;         // the usage-only chunk
};
Json chat_chunk(const std::string& id, const std::string& model, int64_t created, const ChunkDelta& d);
// (A completion has no reasoning channel: its "text" is d.reasoning then d.content, so nothing is lost.)
Json completion_chunk(const std::string& id, const std::string& model, int64_t created, const ChunkDelta& d);
// "data: <json>\n\n"
std::string sse_event(const Json& j);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// --- reasoning -----------------------------------------------------------------------------------

// Splits a reasoning model's streamed answer into its thinking (between <think> and </think>) and
// the answer, as DeepSeek's API does (reasoning_content / content). Streaming-safe: a tag split
// across pieces is held back until it is known; nothing is lost or duplicated, and the pieces of
// each side concatenate to what a split of the whole text gives. `starts_thinking`: the rendered
// prompt already opened the section (DeepSeek-R1's template ends with "<think>\n"). Without an
// opening tag at the very start (whitespace aside) the text is all answer. Whitespace right after
// <think> and right after </think> is dropped, as DeepSeek's API does.
class ReasoningSplitter {
 public:
  explicit ReasoningSplitter(bool starts_thinking = false);
  struct Piece {
    std::string reasoning, content;
  };
  Piece push(std::string_view text);  // what is final so far
  Piece flush();                      // the end: everything held back (an unclosed section stays reasoning)

 private:
  // start: whitespace and a possible partial "<think>" held; opened: just past <think>, whitespace
  // dropped; thinking: reasoning, a possible partial "</think>" held; after: past </think>,
  // whitespace dropped; answer: everything is content.
  enum class State : uint8_t { start, opened, thinking, after, answer };
  State state_;
  std::string held_;
};

// Whether a chat template renders reasoning sections (mentions "<think>"), and whether a rendered
// prompt ends inside one (its last non-whitespace text is "<think>").
bool template_has_reasoning(std::string_view template_source);
bool prompt_opens_reasoning(std::string_view rendered_prompt);

}  // namespace moerun::serve
