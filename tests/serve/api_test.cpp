// The wire format of `moerun serve` (src/serve/api.h): request bodies parsed and validated, every
// error a 400 naming the field; responses and stream chunks in OpenAI's exact shapes; and the
// reasoning splitter, which must give the same split however the text is cut into pieces.

#include <gtest/gtest.h>

#include <chrono>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "serve/api.h"
#include "util/utf8.h"

namespace {

using moerun::SamplerParams;
using moerun::serve::ApiError;
using moerun::serve::ChunkDelta;
using moerun::serve::CompletionRequest;
using moerun::serve::Json;
using moerun::serve::ReasoningSplitter;
using moerun::serve::RequestError;
using moerun::serve::Usage;
namespace api = moerun::serve;

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// The error `f` throws, checked for what every error must be: a 400 invalid_request_error whose
// message is valid UTF-8 and whose body dumps.
template <class F>
ApiError error_from(F&& f, const std::string& what) {
  try {
    f();
  } catch (const RequestError& e) {
    const ApiError& err = e.error();
    EXPECT_EQ(err.status, 400) << what;
    EXPECT_EQ(err.type, "invalid_request_error") << what;
    EXPECT_FALSE(err.message.empty()) << what;
    EXPECT_TRUE(moerun::detail::is_valid_utf8(err.message)) << what;
    EXPECT_TRUE(moerun::detail::is_valid_utf8(err.param)) << what;
    EXPECT_NO_THROW((void)api::error_body(err).dump()) << what;
    return err;
  }
  ADD_FAILURE() << "expected a RequestError for " << what;
  ApiError none;
  none.status = 0;
  return none;
}

ApiError chat_error(const std::string& body) {
  return error_from([&] { (void)api::parse_chat_request(body); }, body);
}
ApiError completion_error(const std::string& body) {
  return error_from([&] { (void)api::parse_completion_request(body); }, body);
}

// A valid chat body with `extra` fields appended (",\"temperature\": 0").
std::string chat(const std::string& extra) {
  return R"({"messages": [{"role": "user", "content": "hi"}])" + extra + "}";
}
// A chat body with one message.
std::string chat_message(const std::string& message) { return R"({"messages": [)" + message + "]}"; }

// --- chat requests --------------------------------------------------------------------------------

TEST(ApiChat, ParsesEveryField) {
  const CompletionRequest r = api::parse_chat_request(R"({
    "model": "deepseek", "stream": true, "stream_options": {"include_usage": true},
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
    "presence_penalty": 0.25, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "seed": 42,
    "stop": ["\n\n", "END"], "n": 1, "logprobs": false, "user": "someone",
    "response_format": {"type": "text"}, "chat_template_kwargs": {"enable_thinking": false}})");
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.model, "deepseek");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.messages.dump(), R"([{"role":"system","content":"be brief"},{"role":"user","content":"hi"}])");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.5f);
  EXPECT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_EQ(r.min_p, 0.05f);
  EXPECT_EQ(r.presence_penalty, 0.25f);
  EXPECT_EQ(r.frequency_penalty, -0.5f);
  EXPECT_EQ(r.repetition_penalty, 1.1f);
  EXPECT_EQ(r.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(r.chat_template_kwargs.dump(), R"({"enable_thinking":false})");
  EXPECT_TRUE(r.tools.is_null());
}

TEST(ApiChat, UnsetFieldsAreEmpty) {
  const CompletionRequest r = api::parse_chat_request(chat(""));
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.max_tokens || r.temperature || r.top_p || r.top_k || r.min_p || r.presence_penalty ||
               r.frequency_penalty || r.repetition_penalty || r.seed);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.chat_template_kwargs, Json::object());
}

TEST(ApiChat, NullsCountAsAbsent) {
  // What the openai Python client sends for unset options.
  const CompletionRequest r = api::parse_chat_request(chat(R"(, "model": null, "stream": null,
      "stream_options": null, "max_tokens": null, "max_completion_tokens": null, "temperature": null,
      "top_p": null, "top_k": null, "min_p": null, "presence_penalty": null, "frequency_penalty": null,
      "repetition_penalty": null, "seed": null, "stop": null, "n": null, "logprobs": null,
      "tools": null, "tool_choice": null, "response_format": null, "chat_template_kwargs": null)"));
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.max_tokens || r.temperature || r.top_p || r.top_k || r.min_p || r.presence_penalty ||
               r.frequency_penalty || r.repetition_penalty || r.seed);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.chat_template_kwargs, Json::object());
  // Inside a message too: a null name is no name.
  const CompletionRequest m = api::parse_chat_request(chat_message(R"({"role": "user", "content": "x", "name": null})"));
  EXPECT_EQ(m.messages.dump(), R"([{"role":"user","content":"x"}])");
}

TEST(ApiChat, ContentPartsAreJoinedWithoutSeparator) {
  const CompletionRequest r = api::parse_chat_request(chat_message(
      R"({"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}, {"type": "text", "text": ""}]})"));
  EXPECT_EQ(r.messages.dump(), R"([{"role":"user","content":"one two"}])");
  const CompletionRequest empty = api::parse_chat_request(chat_message(R"({"role": "user", "content": []})"));
  EXPECT_EQ(empty.messages[0]["content"], "");
}

TEST(ApiChat, KeepsToolKeysAndDropsReasoning) {
  const CompletionRequest r = api::parse_chat_request(R"({"messages": [
    {"role": "developer", "content": "d"},
    {"role": "user", "content": "weather?", "name": "ann"},
    {"role": "assistant", "content": null, "reasoning_content": "think", "refusal": null,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "content": "cold", "tool_call_id": "c1"},
    {"role": "assistant", "content": "It is cold.", "reasoning_content": "easy"}]})");
  EXPECT_EQ(r.messages.dump(),
            R"([{"role":"developer","content":"d"},{"role":"user","content":"weather?","name":"ann"},)"
            R"({"role":"assistant","content":"","tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\": \"Oslo\"}"}}]},)"
            R"({"role":"tool","content":"cold","tool_call_id":"c1"},{"role":"assistant","content":"It is cold."}])");
}

TEST(ApiChat, ContentIsRequiredUnlessAssistantCallsTools) {
  for (const char* m : {R"({"role": "user"})", R"({"role": "user", "content": null})", R"({"role": "assistant"})"}) {
    const ApiError e = chat_error(chat_message(m));
    EXPECT_EQ(e.param, "messages[0].content") << m;
    EXPECT_TRUE(contains(e.message, "'messages[0].content' is required")) << e.message;
  }
  const ApiError calls = chat_error(chat_message(R"({"role": "assistant", "tool_calls": [{"function": {}}]})"));
  EXPECT_EQ(calls.param, "messages[0].tool_calls[0].function.name");
  EXPECT_EQ(chat_error(chat_message(R"({"role": "assistant", "tool_calls": {}})")).param, "messages[0].tool_calls");
  EXPECT_EQ(chat_error(chat_message(R"({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 5}}]})")).param,
            "messages[0].tool_calls[0].function.arguments");
}

TEST(ApiChat, OnlyTextPartsAreAccepted) {
  const ApiError e = chat_error(R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": "data:..."}}]}]})");
  EXPECT_EQ(e.param, "messages[1].content[0].type");
  EXPECT_TRUE(contains(e.message, "'messages[1].content[0].type' is 'image_url'")) << e.message;
  EXPECT_TRUE(contains(e.message, "only text")) << e.message;

  EXPECT_EQ(chat_error(chat_message(R"({"role": "user", "content": [{"text": "x"}]})")).param, "messages[0].content[0].type");
  EXPECT_EQ(chat_error(chat_message(R"({"role": "user", "content": [{"type": "text"}]})")).param, "messages[0].content[0].text");
  EXPECT_EQ(chat_error(chat_message(R"({"role": "user", "content": [{"type": "text", "text": 1}]})")).param,
            "messages[0].content[0].text");
  EXPECT_EQ(chat_error(chat_message(R"({"role": "user", "content": ["x"]})")).param, "messages[0].content[0]");
  const ApiError num = chat_error(chat_message(R"({"role": "user", "content": 5})"));
  EXPECT_EQ(num.param, "messages[0].content");
  EXPECT_TRUE(contains(num.message, "must be a string or a list of content parts, found an integer")) << num.message;
}

TEST(ApiChat, MessagesAreChecked) {
  ApiError e = chat_error(R"({"model": "m"})");
  EXPECT_EQ(e.param, "messages");
  EXPECT_TRUE(contains(e.message, "'messages' is required")) << e.message;
  e = chat_error(R"({"messages": []})");
  EXPECT_EQ(e.param, "messages");
  EXPECT_TRUE(contains(e.message, "must not be empty")) << e.message;
  e = chat_error(R"({"messages": {"role": "user"}})");
  EXPECT_EQ(e.param, "messages");
  EXPECT_TRUE(contains(e.message, "found an object")) << e.message;
  e = chat_error(R"({"messages": [{"role": "user", "content": "a"}, "hello"]})");
  EXPECT_EQ(e.param, "messages[1]");
  EXPECT_TRUE(contains(e.message, "'messages[1]' must be an object, found a string")) << e.message;
  e = chat_error(chat_message(R"({"content": "a"})"));
  EXPECT_EQ(e.param, "messages[0].role");
  e = chat_error(chat_message(R"({"role": 1, "content": "a"})"));
  EXPECT_EQ(e.param, "messages[0].role");
  EXPECT_TRUE(contains(e.message, "must be a string, found an integer")) << e.message;
  e = chat_error(chat_message(R"({"role": "robot", "content": "a"})"));
  EXPECT_EQ(e.param, "messages[0].role");
  EXPECT_TRUE(contains(e.message, "'robot'")) << e.message;
  EXPECT_TRUE(contains(e.message, "system, developer, user, assistant, tool")) << e.message;
  e = chat_error(chat_message(R"({"role": "user", "content": "a", "name": 3})"));
  EXPECT_EQ(e.param, "messages[0].name");
}

TEST(ApiChat, OnlyOneChoice) {
  EXPECT_NO_THROW(api::parse_chat_request(chat(R"(, "n": 1)")));
  for (const char* n : {"2", "0", "-1", "1.5", "1e30", "18446744073709551615"}) {
    const ApiError e = chat_error(chat(std::string(R"(, "n": )") + n));
    EXPECT_EQ(e.param, "n") << n;
  }
  EXPECT_TRUE(contains(chat_error(chat(R"(, "n": 2)")).message, "'n' must be 1 (one choice per request is supported), found 2"));
  EXPECT_TRUE(contains(chat_error(chat(R"(, "n": 1e30)")).message, "'n' must be 1 (one choice per request is supported), found 1e+30"));
  EXPECT_EQ(chat_error(chat(R"(, "n": "2")")).param, "n");
}

TEST(ApiChat, UnsupportedFeaturesAreRefused) {
  EXPECT_NO_THROW(api::parse_chat_request(chat(R"(, "logprobs": false, "top_logprobs": 0)")));
  ApiError e = chat_error(chat(R"(, "logprobs": true)"));
  EXPECT_EQ(e.param, "logprobs");
  EXPECT_TRUE(contains(e.message, "not supported")) << e.message;
  EXPECT_EQ(chat_error(chat(R"(, "logprobs": 1)")).param, "logprobs");
  e = chat_error(chat(R"(, "response_format": {"type": "json_object"})"));
  EXPECT_EQ(e.param, "response_format.type");
  EXPECT_EQ(chat_error(chat(R"(, "response_format": "json")")).param, "response_format");
}

TEST(ApiChat, Tools) {
  const std::string tools = R"(, "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}])";
  CompletionRequest r = api::parse_chat_request(chat(tools));
  EXPECT_EQ(r.tools.dump(), R"([{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}])");
  r = api::parse_chat_request(chat(tools + R"(, "tool_choice": "auto")"));
  EXPECT_TRUE(r.tools.is_array());
  r = api::parse_chat_request(chat(tools + R"(, "tool_choice": "none")"));
  EXPECT_TRUE(r.tools.is_null());
  r = api::parse_chat_request(chat(R"(, "tools": [])"));
  EXPECT_TRUE(r.tools.is_null());

  ApiError e = chat_error(chat(tools + R"(, "tool_choice": "required")"));
  EXPECT_EQ(e.param, "tool_choice");
  EXPECT_TRUE(contains(e.message, "not supported")) << e.message;
  EXPECT_EQ(chat_error(chat(tools + R"(, "tool_choice": {"type": "function", "function": {"name": "get"}})")).param,
            "tool_choice");
  EXPECT_EQ(chat_error(chat(tools + R"(, "tool_choice": "sometimes")")).param, "tool_choice");
  EXPECT_EQ(chat_error(chat(R"(, "tools": {})")).param, "tools");
  EXPECT_EQ(chat_error(chat(R"(, "tools": [{"type": "retrieval"}])")).param, "tools[0].type");
  EXPECT_EQ(chat_error(chat(R"(, "tools": [{"type": "function"}])")).param, "tools[0].function");
  EXPECT_EQ(chat_error(chat(R"(, "tools": [{"function": {"description": "x"}}])")).param, "tools[0].function.name");
}

TEST(ApiChat, StopIsAStringOrAList) {
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "stop": "END")")).stop, std::vector<std::string>{"END"});
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "stop": ["a", "b"])")).stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(api::parse_chat_request(chat(R"(, "stop": [])")).stop.empty());

  ApiError e = chat_error(chat(R"(, "stop": ["a", 7])"));
  EXPECT_EQ(e.param, "stop[1]");
  EXPECT_TRUE(contains(e.message, "'stop[1]' must be a string, found an integer")) << e.message;
  EXPECT_EQ(chat_error(chat(R"(, "stop": ["a", ""])")).param, "stop[1]");
  EXPECT_EQ(chat_error(chat(R"(, "stop": "")")).param, "stop");
  EXPECT_EQ(chat_error(chat(R"(, "stop": 5)")).param, "stop");
  EXPECT_EQ(chat_error(chat(R"(, "stop": {"a": 1})")).param, "stop");

  const std::string longest(api::kMaxStopBytes, 'x');
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "stop": ")" + longest + "\"")).stop[0].size(), api::kMaxStopBytes);
  e = chat_error(chat(R"(, "stop": ["a", ")" + longest + "x\"]"));
  EXPECT_EQ(e.param, "stop[1]");
  EXPECT_TRUE(contains(e.message, "1025 bytes")) << e.message;

  std::string many = R"(, "stop": [)";
  for (size_t i = 0; i < api::kMaxStopStrings; ++i) many += (i ? ",\"" : "\"") + std::to_string(i) + "\"";
  EXPECT_EQ(api::parse_chat_request(chat(many + "]")).stop.size(), api::kMaxStopStrings);
  e = chat_error(chat(many + R"(, "one too many"])"));
  EXPECT_EQ(e.param, "stop");
  EXPECT_TRUE(contains(e.message, "17 strings")) << e.message;
}

TEST(ApiChat, MaxCompletionTokensWins) {
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "max_tokens": 5, "max_completion_tokens": 9)")).max_tokens, 9);
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "max_completion_tokens": 9, "max_tokens": 5)")).max_tokens, 9);
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "max_tokens": 5, "max_completion_tokens": null)")).max_tokens, 5);
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "max_tokens": 5.0)")).max_tokens, 5);  // an integral float
  // Both are checked, the one that loses too.
  EXPECT_EQ(chat_error(chat(R"(, "max_tokens": 0, "max_completion_tokens": 9)")).param, "max_tokens");
  ApiError e = chat_error(chat(R"(, "max_completion_tokens": 0)"));
  EXPECT_EQ(e.param, "max_completion_tokens");
  EXPECT_TRUE(contains(e.message, "'max_completion_tokens' must be an integer >= 1, found 0")) << e.message;
  e = chat_error(chat(R"(, "max_tokens": 1.5)"));
  EXPECT_TRUE(contains(e.message, "'max_tokens' must be an integer, found 1.5")) << e.message;
  EXPECT_EQ(chat_error(chat(R"(, "max_tokens": 1e30)")).param, "max_tokens");
  EXPECT_EQ(chat_error(chat(R"(, "max_tokens": 18446744073709551615)")).param, "max_tokens");
}

TEST(ApiChat, WrongTypesNameTheFieldAndBothTypes) {
  struct Case {
    const char* extra;
    const char* param;
    const char* message;
  };
  const Case cases[] = {
      {R"("temperature": "hot")", "temperature", "'temperature' must be a number, found a string"},
      {R"("temperature": true)", "temperature", "'temperature' must be a number, found true"},
      {R"("top_p": [1])", "top_p", "'top_p' must be a number, found a list"},
      {R"("min_p": {})", "min_p", "'min_p' must be a number, found an object"},
      {R"("presence_penalty": "0")", "presence_penalty", "'presence_penalty' must be a number, found a string"},
      {R"("frequency_penalty": false)", "frequency_penalty", "'frequency_penalty' must be a number"},
      {R"("repetition_penalty": "1")", "repetition_penalty", "'repetition_penalty' must be a number"},
      {R"("top_k": 1.5)", "top_k", "'top_k' must be an integer, found 1.5"},
      {R"("top_k": "40")", "top_k", "'top_k' must be an integer, found a string"},
      {R"("seed": "42")", "seed", "'seed' must be an integer, found a string"},
      {R"("seed": 4.2)", "seed", "'seed' must be an integer, found 4.2"},
      {R"("max_tokens": "9")", "max_tokens", "'max_tokens' must be an integer, found a string"},
      {R"("stream": "yes")", "stream", "'stream' must be true or false, found a string"},
      {R"("stream": 1)", "stream", "'stream' must be true or false, found an integer"},
      {R"("stream_options": true)", "stream_options", "'stream_options' must be an object, found true"},
      {R"("stream": true, "stream_options": {"include_usage": "yes"})", "stream_options.include_usage",
       "'stream_options.include_usage' must be true or false, found a string"},
      {R"("model": 5)", "model", "'model' must be a string, found an integer"},
      {R"("logprobs": "no")", "logprobs", "'logprobs' must be true or false, found a string"},
      {R"("chat_template_kwargs": [])", "chat_template_kwargs", "'chat_template_kwargs' must be an object, found a list"},
      {R"("chat_template_kwargs": "x")", "chat_template_kwargs", "must be an object, found a string"},
  };
  for (const Case& c : cases) {
    const ApiError e = chat_error(chat(std::string(", ") + c.extra));
    EXPECT_EQ(e.param, c.param) << c.extra;
    EXPECT_TRUE(contains(e.message, c.message)) << c.extra << " -> " << e.message;
  }
}

TEST(ApiChat, OutOfRangeNumbersNameTheFieldAndTheRange) {
  struct Case {
    const char* extra;
    const char* param;
    const char* message;
  };
  const Case cases[] = {
      {R"("temperature": -0.1)", "temperature", "'temperature' must be a number >= 0, found -0.1"},
      {R"("temperature": 1e39)", "temperature", "out of range"},  // finite as a double, not as a float
      {R"("temperature": -1e300)", "temperature", "out of range"},
      {R"("top_p": 0)", "top_p", "'top_p' must be a number in (0, 1], found 0"},
      {R"("top_p": 1.5)", "top_p", "in (0, 1]"},
      {R"("top_p": 1e-50)", "top_p", "in (0, 1]"},  // 0 as a float
      {R"("min_p": 2)", "min_p", "'min_p' must be a number in [0, 1], found 2"},
      {R"("min_p": -0.5)", "min_p", "in [0, 1]"},
      {R"("presence_penalty": 3)", "presence_penalty", "in [-2, 2], found 3"},
      {R"("frequency_penalty": -2.5)", "frequency_penalty", "in [-2, 2], found -2.5"},
      {R"("repetition_penalty": 0)", "repetition_penalty", "'repetition_penalty' must be a number > 0, found 0"},
      {R"("repetition_penalty": -1)", "repetition_penalty", "> 0"},
      {R"("top_k": -2)", "top_k", "'top_k' must be an integer from -1 (off) to 2147483647, found -2"},
      {R"("top_k": 2147483648)", "top_k", "found 2147483648"},
      {R"("seed": -1)", "seed", "'seed' must be an integer from 0 to 18446744073709551615"},
      {R"("seed": -1)", "seed", "random"},
      {R"("seed": 1e30)", "seed", "from 0 to"},
      {R"("max_tokens": -3)", "max_tokens", "'max_tokens' must be an integer >= 1, found -3"},
  };
  for (const Case& c : cases) {
    const ApiError e = chat_error(chat(std::string(", ") + c.extra));
    EXPECT_EQ(e.param, c.param) << c.extra;
    EXPECT_TRUE(contains(e.message, c.message)) << c.extra << " -> " << e.message;
  }
}

TEST(ApiChat, BoundaryNumbersAreAccepted) {
  const CompletionRequest r = api::parse_chat_request(chat(R"(, "temperature": 0, "top_p": 1, "min_p": 0,
      "presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 1e-3, "top_k": 0,
      "seed": 18446744073709551615, "max_tokens": 9223372036854775807)"));
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.min_p, 0.0f);
  EXPECT_EQ(r.presence_penalty, -2.0f);
  EXPECT_EQ(r.frequency_penalty, 2.0f);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(r.seed, UINT64_MAX);
  EXPECT_EQ(r.max_tokens, INT64_MAX);
  // Integers for float fields; top_k -1 is llama-server's "off".
  const CompletionRequest s = api::parse_chat_request(chat(R"(, "temperature": 1, "top_k": -1, "seed": 7.0)"));
  EXPECT_EQ(s.temperature, 1.0f);
  EXPECT_EQ(s.top_k, 0);
  EXPECT_EQ(s.seed, 7u);
  EXPECT_EQ(api::parse_chat_request(chat(R"(, "top_k": 2147483647)")).top_k, 2147483647);
}

TEST(ApiChat, StreamOptions) {
  EXPECT_TRUE(api::parse_chat_request(chat(R"(, "stream": true, "stream_options": {"include_usage": true})")).include_usage);
  EXPECT_FALSE(api::parse_chat_request(chat(R"(, "stream": true, "stream_options": {})")).include_usage);
  EXPECT_FALSE(api::parse_chat_request(chat(R"(, "stream": true, "stream_options": {"include_usage": false})")).include_usage);
  // Without a stream there is nothing to end with a usage chunk: accepted, ignored.
  const CompletionRequest r = api::parse_chat_request(chat(R"(, "stream_options": {"include_usage": true})"));
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
}

// --- the body itself ------------------------------------------------------------------------------

TEST(ApiBody, MalformedJson) {
  for (const std::string body : {"{", "{\"messages\": [}", "{'messages': []}", "{\"a\": 1,}", "nul", "{} {}",
                                 "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]} x"}) {
    const ApiError e = chat_error(body);
    EXPECT_TRUE(e.message.starts_with("the request body is not valid JSON: ")) << body << " -> " << e.message;
    EXPECT_FALSE(contains(e.message, "[json.exception")) << e.message;
    EXPECT_EQ(e.param, "") << body;
  }
  EXPECT_TRUE(contains(chat_error(R"({"max_tokens": 1e400})").message, "number overflow")) << "nlohmann's reason is kept";
  for (const std::string body : {"", "  \r\n"}) EXPECT_TRUE(contains(chat_error(body).message, "empty")) << body;
}

TEST(ApiBody, MustBeAnObject) {
  for (const auto& [body, type] : std::vector<std::pair<std::string, std::string>>{
           {"[]", "a list"}, {"42", "an integer"}, {"4.5", "a number"}, {"\"x\"", "a string"}, {"null", "null"}, {"true", "true"}}) {
    const ApiError e = chat_error(body);
    EXPECT_EQ(e.message, "the request body must be a JSON object, found " + type) << body;
    EXPECT_EQ(error_from([&] { (void)api::parse_completion_request(body); }, body).message, e.message);
    EXPECT_EQ(error_from([&] { (void)api::parse_tokenize_request(body); }, body).message, e.message);
    EXPECT_EQ(error_from([&] { (void)api::parse_detokenize_request(body); }, body).message, e.message);
  }
}

TEST(ApiBody, InvalidUtf8NamesTheField) {
  struct Case {
    std::string body, param;
  };
  const Case cases[] = {
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\xff\"}]}", "messages[0].content"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"ok\"}, {\"role\": \"user\", \"content\": "
       "[{\"type\": \"text\", \"text\": \"\xc0\xaf\"}]}]}",
       "messages[1].content[0].text"},                                                     // overlong
      {"{\"model\": \"\xed\xa0\x80\"}", "model"},                                          // a surrogate
      {"{\"stop\": [\"ok\", \"\xe2\x82\"]}", "stop[1]"},                                   // cut short
      {"{\"chat_template_kwargs\": {\"a\": {\"b\": [1, \"\xf4\x90\x80\x80\"]}}}", "chat_template_kwargs.a.b[1]"},  // > U+10FFFF
      {"{\"model\": \"m\", \"\xff\": 1}", ""},                                             // in a key
      {"{\"model\": \"m\"\xff}", ""},                                                      // outside any string
      {"\xef\xbb\xbf{}", ""},  // a BOM is fine UTF-8: not this error (checked below)
  };
  for (const Case& c : cases) {
    const ApiError e = chat_error(c.body);
    if (c.body.starts_with("\xef\xbb\xbf")) {
      EXPECT_FALSE(contains(e.message, "invalid UTF-8")) << e.message;  // nlohmann skips the BOM
      EXPECT_EQ(e.param, "messages");
      continue;
    }
    EXPECT_TRUE(contains(e.message, "invalid UTF-8")) << c.body << " -> " << e.message;
    EXPECT_EQ(e.param, c.param) << c.body;
    if (!c.param.empty()) {
      EXPECT_TRUE(contains(e.message, "'" + c.param + "'")) << e.message;
    }
  }
  // Every parser says so, not only the chat one.
  EXPECT_TRUE(contains(error_from([] { (void)api::parse_tokenize_request("{\"content\": \"\xfe\"}"); }, "tokenize").message,
                       "invalid UTF-8"));
  EXPECT_EQ(error_from([] { (void)api::parse_completion_request("{\"prompt\": [\"\x80\"]}"); }, "completion").param, "prompt[0]");
}

TEST(ApiBody, ErrorMessagesAreValidUtf8) {
  // Valid UTF-8 that is not JSON: nlohmann quotes the bytes it read, here half of 'é'.
  const ApiError e = chat_error("{\"a\": t\xc3\xa9}");
  EXPECT_TRUE(e.message.starts_with("the request body is not valid JSON")) << e.message;
  // A long role is quoted short, and cut between characters.
  const ApiError role = chat_error(chat_message("{\"role\": \"" + std::string(200, 'x') + "\xc3\xa9\xc3\xa9\", \"content\": \"\"}"));
  EXPECT_LT(role.message.size(), 300u);
  const ApiError euro = chat_error(chat_message("{\"role\": \"" + std::string(59, 'x') + "\xe2\x82\xac\", \"content\": \"\"}"));
  EXPECT_TRUE(contains(euro.message, "x...'")) << euro.message;
}

TEST(ApiBody, DeepNestingIsRefusedWithoutRecursion) {
  for (const std::string& body : {std::string(100000, '['), std::string(100000, '[') + std::string(100000, ']'),
                                  "{\"messages\": " + std::string(100000, '[') + std::string(100000, ']') + "}"}) {
    const ApiError e = chat_error(body);
    EXPECT_TRUE(contains(e.message, "nested more than 64 levels")) << e.message;
  }
  std::string objects;  // objects and lists in turn
  for (int i = 0; i < 50000; ++i) objects += "{\"a\": [";
  EXPECT_TRUE(contains(chat_error(objects).message, "nested more than 64 levels"));

  // The body is level 1 and chat_template_kwargs level 2: 62 more lists make 64, which is allowed.
  const auto kwargs = [](int lists) {
    return chat(R"(, "chat_template_kwargs": {"x": )" + std::string(lists, '[') + std::string(lists, ']') + "}");
  };
  const CompletionRequest r = api::parse_chat_request(kwargs(62));
  EXPECT_TRUE(r.chat_template_kwargs["x"].is_array());
  EXPECT_TRUE(contains(chat_error(kwargs(63)).message, "nested more than 64 levels"));
}

TEST(ApiBody, ObjectsWithManyKeysParseInLinearTime) {
  // ordered_json's own parser searches every object linearly on each insert: 200k keys would take
  // minutes there. Here it is a fraction of a second; 20 s leaves room for sanitizers and load.
  std::string kwargs = R"(, "chat_template_kwargs": {)";
  for (int i = 0; i < 200000; ++i) kwargs += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
  const std::string body = chat(kwargs + "}");
  const auto t0 = std::chrono::steady_clock::now();
  const CompletionRequest r = api::parse_chat_request(body);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.chat_template_kwargs.size(), 200000u);
  EXPECT_EQ(r.chat_template_kwargs.begin().key(), "k0");
  EXPECT_LT(seconds, 20.0);
}

TEST(ApiBody, DuplicateKeysKeepTheLastValueInTheFirstPlace) {
  // As nlohmann's own parser (and Python's json) do.
  const CompletionRequest r = api::parse_chat_request(
      chat(R"(, "chat_template_kwargs": {"a": 1, "b": {"x": 1}, "a": [3], "b": {"y": 2}}, "temperature": 5, "temperature": 0.5)"));
  EXPECT_EQ(r.chat_template_kwargs.dump(), R"({"a":[3],"b":{"y":2}})");
  EXPECT_EQ(r.temperature, 0.5f);
}

TEST(ApiBody, ParseJsonBodyTakesAnyValue) {
  EXPECT_EQ(api::parse_json_body(R"( [1, "é", {"b": null, "a": 2.5}] )").dump(), R"([1,"é",{"b":null,"a":2.5}])");
  EXPECT_EQ(api::parse_json_body("18446744073709551615").get<uint64_t>(), UINT64_MAX);
  EXPECT_EQ(error_from([] { (void)api::parse_json_body("[1,"); }, "[1,").param, "");
  EXPECT_EQ(error_from([] { (void)api::parse_json_body("[1, \"\xff\"]"); }, "utf-8").param, "[1]");
}

TEST(ApiBody, UnknownFieldsAreIgnored) {
  const CompletionRequest r = api::parse_chat_request(
      chat(R"(, "user": "u", "metadata": {"a": [1]}, "store": false, "parallel_tool_calls": true, "service_tier": "auto")"));
  EXPECT_EQ(r.messages.size(), 1u);
}

// --- completions ----------------------------------------------------------------------------------

TEST(ApiCompletion, Prompt) {
  CompletionRequest r = api::parse_completion_request(R"({"prompt": "Once upon", "max_tokens": 3, "temperature": 0, "stream": true, "model": "m"})");
  EXPECT_FALSE(r.chat);
  EXPECT_EQ(r.prompt, "Once upon");
  EXPECT_EQ(r.max_tokens, 3);
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.messages.empty());
  r = api::parse_completion_request(R"({"prompt": ["only one"]})");
  EXPECT_EQ(r.prompt, "only one");
  EXPECT_EQ(api::parse_completion_request(R"({"prompt": ""})").prompt, "");

  for (const char* body : {R"({"prompt": ["a", "b"]})", R"({"prompt": [1, 2, 3]})", R"({"prompt": [[1, 2]]})", R"({"prompt": []})"}) {
    const ApiError e = completion_error(body);
    EXPECT_EQ(e.param, "prompt") << body;
    EXPECT_TRUE(contains(e.message, "only one string prompt is supported")) << e.message;
  }
  ApiError e = completion_error(R"({"max_tokens": 3})");
  EXPECT_EQ(e.param, "prompt");
  EXPECT_TRUE(contains(e.message, "'prompt' is required")) << e.message;
  EXPECT_EQ(completion_error(R"({"prompt": null})").param, "prompt");
  e = completion_error(R"({"prompt": 5})");
  EXPECT_TRUE(contains(e.message, "'prompt' must be a string, found an integer")) << e.message;
  // messages is not a completions field.
  EXPECT_EQ(completion_error(R"({"messages": [{"role": "user", "content": "hi"}]})").param, "prompt");
}

TEST(ApiCompletion, SharesTheSamplingFieldsAndChecks) {
  const CompletionRequest r = api::parse_completion_request(
      R"({"prompt": "p", "top_k": 5, "seed": 3, "stop": "\n", "max_completion_tokens": 4, "max_tokens": 2, "logprobs": null, "echo": false, "best_of": 1})");
  EXPECT_EQ(r.top_k, 5);
  EXPECT_EQ(r.seed, 3u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.max_tokens, 4);
  EXPECT_EQ(completion_error(R"({"prompt": "p", "temperature": "hot"})").param, "temperature");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "n": 3})").param, "n");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "logprobs": 1})").param, "logprobs");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "logprobs": 0})").param, "logprobs");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "logprobs": "x"})").param, "logprobs");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "echo": true})").param, "echo");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "best_of": 2})").param, "best_of");
  EXPECT_EQ(completion_error(R"({"prompt": "p", "suffix": "end"})").param, "suffix");
}

// --- tokenize / detokenize ------------------------------------------------------------------------

TEST(ApiTokenize, Fields) {
  api::TokenizeRequest t = api::parse_tokenize_request(R"({"content": "héllo", "add_special": true, "with_pieces": true})");
  EXPECT_EQ(t.content, "héllo");
  EXPECT_TRUE(t.add_special);
  EXPECT_TRUE(t.with_pieces);
  t = api::parse_tokenize_request(R"({"content": "", "add_special": null})");
  EXPECT_EQ(t.content, "");
  EXPECT_FALSE(t.add_special);
  EXPECT_FALSE(t.with_pieces);
  const auto err = [](const std::string& body) {
    return error_from([&] { (void)api::parse_tokenize_request(body); }, body);
  };
  EXPECT_EQ(err(R"({})").param, "content");
  EXPECT_EQ(err(R"({"content": null})").param, "content");
  EXPECT_TRUE(contains(err(R"({"content": [1]})").message, "'content' must be a string, found a list"));
  EXPECT_EQ(err(R"({"content": "x", "add_special": 1})").param, "add_special");
  EXPECT_EQ(err(R"({"content": "x", "with_pieces": "yes"})").param, "with_pieces");
}

TEST(ApiDetokenize, Tokens) {
  EXPECT_EQ(api::parse_detokenize_request(R"({"tokens": [0, 1, 2147483647, 5.0]})"),
            (std::vector<int32_t>{0, 1, 2147483647, 5}));
  EXPECT_TRUE(api::parse_detokenize_request(R"({"tokens": []})").empty());
  const auto err = [](const std::string& body) {
    return error_from([&] { (void)api::parse_detokenize_request(body); }, body);
  };
  EXPECT_EQ(err(R"({})").param, "tokens");
  EXPECT_EQ(err(R"({"tokens": "1 2"})").param, "tokens");
  ApiError e = err(R"({"tokens": [1, -1]})");
  EXPECT_EQ(e.param, "tokens[1]");
  EXPECT_TRUE(contains(e.message, "'tokens[1]' must be a token id (an integer from 0 to 2147483647), found -1")) << e.message;
  EXPECT_EQ(err(R"({"tokens": [2147483648]})").param, "tokens[0]");
  EXPECT_EQ(err(R"({"tokens": [1, 2, 1.5]})").param, "tokens[2]");
  EXPECT_EQ(err(R"({"tokens": [1, "2"]})").param, "tokens[1]");
  EXPECT_EQ(err(R"({"tokens": [[1]]})").param, "tokens[0]");
  EXPECT_EQ(err(R"({"tokens": [1e300]})").param, "tokens[0]");

  std::string most = R"({"tokens": [0)";
  for (size_t i = 1; i < api::kMaxDetokenizeTokens; ++i) most += ",0";
  EXPECT_EQ(api::parse_detokenize_request(most + "]}").size(), api::kMaxDetokenizeTokens);
  e = err(most + ",0]}");
  EXPECT_EQ(e.param, "tokens");
  EXPECT_TRUE(contains(e.message, "1000001")) << e.message;
}

// --- sampling -------------------------------------------------------------------------------------

TEST(ApiSampler, RequestFieldsOverTheDefaults) {
  SamplerParams defaults;
  defaults.temperature = 0.6f;
  defaults.top_k = 20;
  defaults.top_p = 0.95f;
  defaults.min_p = 0.01f;
  defaults.repeat_penalty = 1.05f;
  defaults.presence_penalty = 0.1f;
  defaults.frequency_penalty = 0.2f;
  defaults.penalty_last_n = 128;
  defaults.seed = 99;

  SamplerParams p = api::sampler_params(api::parse_chat_request(chat("")), defaults);
  EXPECT_EQ(p.temperature, 0.6f);
  EXPECT_EQ(p.top_k, 20);
  EXPECT_EQ(p.top_p, 0.95f);
  EXPECT_EQ(p.min_p, 0.01f);
  EXPECT_EQ(p.repeat_penalty, 1.05f);
  EXPECT_EQ(p.presence_penalty, 0.1f);
  EXPECT_EQ(p.frequency_penalty, 0.2f);
  EXPECT_EQ(p.penalty_last_n, 128);
  EXPECT_EQ(p.seed, 99u);

  p = api::sampler_params(api::parse_chat_request(chat(R"(, "temperature": 0, "top_k": -1, "top_p": 0.5, "min_p": 0.2,
      "repetition_penalty": 1.3, "presence_penalty": -1, "frequency_penalty": 1.5, "seed": 7)")), defaults);
  EXPECT_EQ(p.temperature, 0.0f);
  EXPECT_TRUE(p.greedy());
  EXPECT_EQ(p.top_k, 0);
  EXPECT_EQ(p.top_p, 0.5f);
  EXPECT_EQ(p.min_p, 0.2f);
  EXPECT_EQ(p.repeat_penalty, 1.3f);
  EXPECT_EQ(p.presence_penalty, -1.0f);
  EXPECT_EQ(p.frequency_penalty, 1.5f);
  EXPECT_EQ(p.penalty_last_n, 128);  // not a request field
  EXPECT_EQ(p.seed, 7u);

  p = api::sampler_params(api::parse_chat_request(chat(R"(, "top_p": 0.5)")), defaults);  // one field only
  EXPECT_EQ(p.top_p, 0.5f);
  EXPECT_EQ(p.temperature, 0.6f);
  EXPECT_EQ(p.seed, 99u);
}

// --- responses ------------------------------------------------------------------------------------

TEST(ApiResponse, ErrorBody) {
  ApiError e;
  e.message = "'n' must be 1";
  e.param = "n";
  EXPECT_EQ(api::error_body(e).dump(),
            R"({"error":{"message":"'n' must be 1","type":"invalid_request_error","param":"n","code":null}})");
  ApiError full;
  full.status = 400;
  full.message = "too long";
  full.code = "context_length_exceeded";
  EXPECT_EQ(api::error_body(full).dump(),
            R"({"error":{"message":"too long","type":"invalid_request_error","param":null,"code":"context_length_exceeded"}})");
  ApiError busy;
  busy.status = 503;
  busy.type = "unavailable_error";
  busy.message = "bad \xff byte";
  EXPECT_EQ(api::error_body(busy).dump(),
            "{\"error\":{\"message\":\"bad \xef\xbf\xbd byte\",\"type\":\"unavailable_error\",\"param\":null,\"code\":null}}");
}

TEST(ApiResponse, Usage) {
  EXPECT_EQ(api::usage_json(Usage{10, 5, 3}).dump(),
            R"({"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":3}})");
}

TEST(ApiResponse, FinishReason) {
  EXPECT_EQ(api::finish_reason("eos"), "stop");
  EXPECT_EQ(api::finish_reason("stop"), "stop");
  EXPECT_EQ(api::finish_reason("length"), "length");
  EXPECT_EQ(api::finish_reason("context"), "length");
  EXPECT_EQ(api::finish_reason("cancelled"), "stop");
  EXPECT_EQ(api::finish_reason("interrupted"), "stop");
  EXPECT_EQ(api::finish_reason(""), "stop");
}

TEST(ApiResponse, ChatCompletion) {
  EXPECT_EQ(api::chat_response("chatcmpl-1", "m", 1700000000, "Hi!", "", "stop", Usage{4, 2, 0}).dump(),
            R"({"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[)"
            R"({"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop","logprobs":null}],)"
            R"("usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":0}}})");
  const Json r = api::chat_response("c", "m", 1, "answer", "thought", "length", Usage{});
  EXPECT_EQ(r["choices"][0]["message"].dump(), R"({"role":"assistant","content":"answer","reasoning_content":"thought"})");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(r.contains("system_fingerprint"));
}

TEST(ApiResponse, TextCompletion) {
  EXPECT_EQ(api::completion_response("cmpl-1", "m", 5, " there", "length", Usage{2, 1, 1}).dump(),
            R"({"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[)"
            R"({"index":0,"text":" there","finish_reason":"length","logprobs":null}],)"
            R"("usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}})");
}

TEST(ApiResponse, ChatChunks) {
  const std::string head = R"({"id":"c","object":"chat.completion.chunk","created":9,"model":"m","choices":[)";
  const auto chunk = [](const ChunkDelta& d) { return api::chat_chunk("c", "m", 9, d).dump(); };
  ChunkDelta first;
  first.role = true;
  EXPECT_EQ(chunk(first), head + R"({"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]})");
  ChunkDelta text;
  text.content = "Hel";
  EXPECT_EQ(chunk(text), head + R"({"index":0,"delta":{"content":"Hel"},"finish_reason":null,"logprobs":null}]})");
  ChunkDelta thinking;
  thinking.reasoning = "hmm";
  EXPECT_EQ(chunk(thinking), head + R"({"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null,"logprobs":null}]})");
  ChunkDelta last;
  last.finish = "stop";
  EXPECT_EQ(chunk(last), head + R"({"index":0,"delta":{},"finish_reason":"stop","logprobs":null}]})");
  ChunkDelta usage;
  usage.usage = Usage{3, 4, 0};
  EXPECT_EQ(chunk(usage), head + R"(],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}})");
}

TEST(ApiResponse, CompletionChunks) {
  const std::string head = R"({"id":"x","object":"text_completion","created":2,"model":"m","choices":[)";
  const auto chunk = [](const ChunkDelta& d) { return api::completion_chunk("x", "m", 2, d).dump(); };
  ChunkDelta text;
  text.content = "abc";
  EXPECT_EQ(chunk(text), head + R"({"index":0,"text":"abc","finish_reason":null,"logprobs":null}]})");
  ChunkDelta last;
  last.finish = "length";
  EXPECT_EQ(chunk(last), head + R"({"index":0,"text":"","finish_reason":"length","logprobs":null}]})");
  ChunkDelta both;  // no reasoning channel: nothing is lost
  both.reasoning = "a";
  both.content = "b";
  EXPECT_EQ(api::completion_chunk("x", "m", 2, both)["choices"][0]["text"], "ab");
  ChunkDelta usage;
  usage.usage = Usage{1, 1, 0};
  EXPECT_EQ(chunk(usage), head + R"(],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,"prompt_tokens_details":{"cached_tokens":0}}})");
}

TEST(ApiResponse, SseEvents) {
  Json j = Json::object();
  j["a"] = "é\n";
  EXPECT_EQ(api::sse_event(j), "data: {\"a\":\"é\\n\"}\n\n");
  EXPECT_EQ(api::kSseDone, "data: [DONE]\n\n");
  // Invalid UTF-8 costs a U+FFFD, never an exception mid-stream.
  j["a"] = "x\xff";
  EXPECT_EQ(api::sse_event(j), "data: {\"a\":\"x\xef\xbf\xbd\"}\n\n");
}

TEST(ApiResponse, BuildersNeverEmitInvalidUtf8) {
  ChunkDelta d;
  d.content = "half \xe2\x82";
  d.reasoning = "\xff";
  for (const Json& j : {api::chat_response("i\xff", "m\xc0", 1, "a\xff", "r\xfe", "stop", Usage{}),
                        api::completion_response("i", "m", 1, "\x80", "stop", Usage{}), api::chat_chunk("i", "m", 1, d),
                        api::completion_chunk("i", "m", 1, d)}) {
    std::string dumped;
    EXPECT_NO_THROW(dumped = j.dump());  // the strict handler: throws on invalid UTF-8
    EXPECT_TRUE(moerun::detail::is_valid_utf8(dumped)) << dumped;
  }
}

// --- reasoning ------------------------------------------------------------------------------------

struct Split {
  std::string reasoning, content;
  bool operator==(const Split&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Split& s) {
  return os << "{reasoning: '" << s.reasoning << "', content: '" << s.content << "'}";
}

Split run(bool starts_thinking, const std::vector<std::string_view>& pieces) {
  ReasoningSplitter splitter(starts_thinking);
  Split out;
  for (const std::string_view p : pieces) {
    const ReasoningSplitter::Piece got = splitter.push(p);
    out.reasoning += got.reasoning;
    out.content += got.content;
  }
  const ReasoningSplitter::Piece rest = splitter.flush();
  out.reasoning += rest.reasoning;
  out.content += rest.content;
  return out;
}

struct ReasoningCase {
  bool starts_thinking;
  std::string text;
  Split expected;
};

const std::vector<ReasoningCase>& reasoning_cases() {
  static const std::vector<ReasoningCase> cases = {
      {false, "<think>\nabc\n</think>\n\nanswer", {"abc\n", "answer"}},
      {false, "  \n<think>x</think>y", {"x", "y"}},
      {false, "\t\r\n <think> \t\n r \n</think> \r\n\t c  ", {"r \n", "c  "}},
      {false, "hello <think>x</think>", {"", "hello <think>x</think>"}},
      {false, "  hello", {"", "  hello"}},
      {false, "   ", {"", "   "}},
      {false, "", {"", ""}},
      {false, "<thin", {"", "<thin"}},
      {false, " <think", {"", " <think"}},
      {false, "<thinking>x", {"", "<thinking>x"}},
      {false, "<<think>x</think>y", {"", "<<think>x</think>y"}},
      {false, "</think>x", {"", "</think>x"}},
      {false, "<think>", {"", ""}},
      {false, "<think>  \n", {"", ""}},
      {false, "<think></think>", {"", ""}},
      {false, "<think></think>\n\n", {"", ""}},
      {false, "<think>abc", {"abc", ""}},
      {false, "<think>abc</thi", {"abc</thi", ""}},
      {false, "<think>a</think ", {"a</think ", ""}},
      {false, "<think>a<</think>b", {"a<", "b"}},
      {false, "<think>a</</think>b", {"a</", "b"}},
      {false, "<think>a</think>b</think>c", {"a", "b</think>c"}},
      {false, "<think><think>a</think>b", {"<think>a", "b"}},
      {false, "<think>é ü</think>\n€", {"é ü", "€"}},
      {true, "\nabc</think>\n\nanswer", {"abc", "answer"}},
      {true, "abc", {"abc", ""}},
      {true, "  ", {"", ""}},
      {true, "", {"", ""}},
      {true, "</think>x", {"", "x"}},
      {true, "<think>a</think>b", {"<think>a", "b"}},
      {true, "a</think>", {"a", ""}},
      {true, "a</think>  b </think> c", {"a", "b </think> c"}},
  };
  return cases;
}

TEST(Reasoning, WholeText) {
  for (const ReasoningCase& c : reasoning_cases())
    EXPECT_EQ(run(c.starts_thinking, {c.text}), c.expected) << c.text << " starts_thinking=" << c.starts_thinking;
}

TEST(Reasoning, EverySplitGivesTheSameResult) {
  for (const ReasoningCase& c : reasoning_cases()) {
    const std::string_view t = c.text;
    for (size_t i = 0; i <= t.size(); ++i) {
      EXPECT_EQ(run(c.starts_thinking, {t.substr(0, i), t.substr(i)}), c.expected) << c.text << " cut at " << i;
      for (size_t j = i; j <= t.size(); ++j)
        EXPECT_EQ(run(c.starts_thinking, {t.substr(0, i), t.substr(i, j - i), t.substr(j)}), c.expected)
            << c.text << " cut at " << i << " and " << j;
    }
    std::vector<std::string_view> bytes;
    for (size_t i = 0; i < t.size(); ++i) bytes.push_back(t.substr(i, 1));
    EXPECT_EQ(run(c.starts_thinking, bytes), c.expected) << c.text << " byte by byte";
    // Empty pieces change nothing.
    std::vector<std::string_view> padded;
    for (const std::string_view b : bytes) padded.insert(padded.end(), {std::string_view(), b, std::string_view()});
    EXPECT_EQ(run(c.starts_thinking, padded), c.expected) << c.text << " with empty pieces";
  }
}

TEST(Reasoning, EmitsAsSoonAsItIsKnown) {
  ReasoningSplitter s;
  ReasoningSplitter::Piece p = s.push("  ");
  EXPECT_EQ(p.content + p.reasoning, "");  // maybe before <think>
  p = s.push("<thi");
  EXPECT_EQ(p.content + p.reasoning, "");
  p = s.push("nk>\n");
  EXPECT_EQ(p.content + p.reasoning, "");
  p = s.push("step one</");
  EXPECT_EQ(p.reasoning, "step one");  // "</" held: it may be the end tag
  EXPECT_EQ(p.content, "");
  p = s.push("b> more");
  EXPECT_EQ(p.reasoning, "</b> more");
  p = s.push("</think>\n");
  EXPECT_EQ(p.reasoning, "");
  EXPECT_EQ(p.content, "");
  p = s.push("\nThe answer");
  EXPECT_EQ(p.content, "The answer");
  p = s.push(" <think>");
  EXPECT_EQ(p.content, " <think>");  // after the section everything is content
  p = s.flush();
  EXPECT_EQ(p.content + p.reasoning, "");

  ReasoningSplitter plain;
  EXPECT_EQ(plain.push("\nHello").content, "\nHello");  // no tag: the answer starts at once, whitespace kept
  EXPECT_EQ(plain.push(" <think>").content, " <think>");
}

TEST(Reasoning, PiecesCutBetweenCharactersStayValidUtf8) {
  // Everything held is ASCII (whitespace, a partial tag), so output pieces end where input pieces
  // or ASCII bytes do: valid UTF-8 in, valid UTF-8 out.
  const std::string text = "  <think>\nπ≈3 «</»</think>\n🙂 ok <";
  ReasoningSplitter s;
  std::string reasoning, content;
  for (size_t i = 0; i < text.size();) {
    const size_t n = moerun::detail::utf8_len(static_cast<unsigned char>(text[i]));
    const ReasoningSplitter::Piece p = s.push(std::string_view(text).substr(i, n));
    EXPECT_TRUE(moerun::detail::is_valid_utf8(p.reasoning)) << i;
    EXPECT_TRUE(moerun::detail::is_valid_utf8(p.content)) << i;
    reasoning += p.reasoning;
    content += p.content;
    i += n;
  }
  const ReasoningSplitter::Piece p = s.flush();
  EXPECT_EQ(reasoning + p.reasoning, "π≈3 «</»");
  EXPECT_EQ(content + p.content, "🙂 ok <");
}

TEST(Reasoning, ManySmallPiecesStayLinear) {
  // A model that streams newlines for a long time before deciding: the held whitespace is not
  // rescanned on every push (that would be ~10^10 steps here).
  ReasoningSplitter s;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 200000; ++i) {
    const ReasoningSplitter::Piece p = s.push("\n");
    ASSERT_TRUE(p.content.empty() && p.reasoning.empty());
  }
  const ReasoningSplitter::Piece p = s.push("<think>x");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(p.reasoning, "x");
  EXPECT_EQ(p.content, "");
  EXPECT_LT(seconds, 5.0);
}

TEST(Reasoning, TemplateAndPromptDetection) {
  EXPECT_TRUE(api::template_has_reasoning("{% if x %}<think>\n{% endif %}"));
  EXPECT_FALSE(api::template_has_reasoning("{{ messages }}</think"));
  EXPECT_FALSE(api::template_has_reasoning(""));
  EXPECT_TRUE(api::prompt_opens_reasoning("<｜Assistant｜><think>\n"));
  EXPECT_TRUE(api::prompt_opens_reasoning("<think>"));
  EXPECT_TRUE(api::prompt_opens_reasoning("x<think> \t\r\n"));
  EXPECT_FALSE(api::prompt_opens_reasoning("<think>\n\n</think>\n\n"));
  EXPECT_FALSE(api::prompt_opens_reasoning("<think>x"));
  EXPECT_FALSE(api::prompt_opens_reasoning("think>"));
  EXPECT_FALSE(api::prompt_opens_reasoning(""));
  EXPECT_FALSE(api::prompt_opens_reasoning("   "));
}

}  // namespace
