#pragma once
// ChatTemplate: turns a conversation into the prompt text a model was trained on, by running the
// model's Jinja2 chat template the way Hugging Face transformers does (jinja2 with trim_blocks,
// lstrip_blocks, loop controls and transformers' globals), byte for byte. A template construct
// outside the supported subset is an Error naming the template and line, never a wrong prompt.
//
// Conversations are JSON with key order kept (nlohmann::ordered_json): |tojson and dict.items()
// follow insertion order, as Python dicts do. A nlohmann::json converts implicitly, with its keys
// in sorted order.
//
// The rendered text already holds the template's own BOS (DeepSeek, Llama-3, Mistral): tokenize it
// without adding special tokens, as apply_chat_template(tokenize=True) does (docs/MODELS.md §8).
//
// Added-token text inside the conversation ("<|im_end|>" or DeepSeek's "<｜Assistant｜>" typed by a
// user) must not become a control token: apply_tracked() also says which bytes of the prompt came
// from the conversation, and the tokenizer encodes those as plain text:
//
//   const RenderedPrompt prompt = chat_template.apply_tracked(messages, options);
//   const std::vector<int32_t> ids = tokenizer.encode(
//       prompt.text, {.add_special_tokens = false, .parse_special = true, .plain_spans = prompt.content});
//
// Limits (docs/decisions.md): a template nests at most 256 levels (statements and expressions) and
// holds at most 100,000 of them; one rendering creates at most 512 MiB of strings and lists in total
// and no string, the prompt included, longer than 256 MiB. Past a limit it fails with an Error.

#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moerun/tokenizer.h"

namespace moerun {

namespace chat {
struct Program;
}

using ChatJson = nlohmann::ordered_json;

struct ChatOptions {
  bool add_generation_prompt = true;      // end with the header that opens the assistant's turn
  ChatJson tools;                         // null: tools=None; else a list of JSON-schema objects
  ChatJson documents;                     // null: documents=None; else a list of objects
  ChatJson kwargs = ChatJson::object();   // more template variables ({"enable_thinking": false});
                                          // they override the special tokens of the same name
  std::optional<std::time_t> now;         // the clock strftime_now() reads; nullopt: system time
};

// A prompt and where the conversation's own text landed in it.
struct RenderedPrompt {
  std::string text;               // exactly what apply() returns
  std::vector<TextSpan> content;  // bytes of `text` that came from messages, tools and documents:
                                  // sorted, disjoint, non-adjacent. Text derived from them (|upper,
                                  // |tojson) counts whole; the template's own text never does.
};

class ChatTemplate {
 public:
  // `name` is how errors refer to the template ("tokenizer_config.json chat_template").
  static ChatTemplate parse(const std::string& source, const std::string& name);
  // The template of a Hugging Face model directory, found as transformers does: chat_template.jinja
  // (and additional_chat_templates/tool_use.jinja), else tokenizer_config.json "chat_template" (a
  // string, or a list of {name, template} of which "default" is used and "tool_use" when tools are
  // given), else chat_template.json; plus the special tokens of tokenizer_config.json.
  static ChatTemplate load(const std::filesystem::path& model_dir);

  // Renders with exactly the variables in `context` (a JSON object) and the globals.
  std::string render(const ChatJson& context, std::optional<std::time_t> now = std::nullopt) const;
  // As transformers' apply_chat_template(messages, tokenize=False, ...): messages (keys whose value
  // is null dropped, reasoning fields aliased), tools, documents, add_generation_prompt, the special
  // tokens (bos_token, eos_token, ...) and options.kwargs.
  std::string apply(const ChatJson& messages, const ChatOptions& options = {}) const;
  // apply(), plus the content spans to pass to Tokenizer::encode as EncodeOptions::plain_spans. Every
  // string in messages, tools and documents is content; the special tokens and options.kwargs are not.
  RenderedPrompt apply_tracked(const ChatJson& messages, const ChatOptions& options = {}) const;

  const std::string& name() const { return name_; }
  const std::string& source() const { return source_; }
  // bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token (those set) and the
  // model-specific extra_special_tokens, as strings: transformers' special_tokens_map.
  const ChatJson& special_tokens() const { return special_tokens_; }

 private:
  RenderedPrompt apply_impl(const ChatJson& messages, const ChatOptions& options, bool track) const;
  std::shared_ptr<const chat::Program> program_;
  std::shared_ptr<const chat::Program> tool_use_;  // the "tool_use" template, when the model has one
  std::string name_, source_;
  ChatJson special_tokens_ = ChatJson::object();
};

}  // namespace moerun
