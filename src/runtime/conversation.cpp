#include "moerun/conversation.h"

#include <algorithm>
#include <utility>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;

namespace {

// The checks set_messages() and from_json() share: Error("conversation", ...) naming the message.
void check_messages(const ChatJson& messages, bool has_template) {
  if (!messages.is_array()) throw Error("conversation", "the messages must be a list");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatJson& x = messages[i];
    const std::string where = cat("messages[", i, "]");
    if (!x.is_object() || !x.contains("role") || !x["role"].is_string())
      throw Error("conversation", where + ": expected an object with a string \"role\"");
    // Without a template the turns are joined as text; a template may take richer content.
    if (!has_template && !(x.contains("content") && x["content"].is_string()))
      throw Error("conversation", where + ": \"content\" must be a string (the model has no chat template)");
  }
}

}  // namespace

Conversation::Conversation(Tokenizer tokenizer, std::optional<ChatTemplate> chat_template, ConversationOptions options)
    : tokenizer_(std::move(tokenizer)), template_(std::move(chat_template)), options_(std::move(options)) {}

void Conversation::set_system(std::string system) {
  system_ = std::move(system);
  changed();
}

void Conversation::set_messages(ChatJson messages) {
  check_messages(messages, has_template());
  messages_ = std::move(messages);
  changed();
}

void Conversation::add_message(std::string role, std::string content) {
  messages_.push_back({{"role", std::move(role)}, {"content", std::move(content)}});
  changed();
}

void Conversation::pop_message() {
  if (messages_.empty()) return;
  messages_.erase(messages_.end() - 1);
  changed();
}

void Conversation::clear() {
  messages_ = ChatJson::array();
  changed();
}

void Conversation::set_options(ConversationOptions options) {
  options_ = std::move(options);
  changed();
}

ChatJson Conversation::to_json() const { return {{"system", system_}, {"messages", messages_}}; }

void Conversation::from_json(const ChatJson& j) {
  if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array())
    throw Error("conversation", "not a conversation (expected {\"system\": ..., \"messages\": [...]})");
  if (j.contains("system") && !j["system"].is_string() && !j["system"].is_null())
    throw Error("conversation", "\"system\" must be a string");
  check_messages(j["messages"], has_template());
  messages_ = j["messages"];
  system_ = j.contains("system") && j["system"].is_string() ? j["system"].get<std::string>() : std::string();
  changed();
}

ChatJson Conversation::template_messages() const {
  ChatJson all = ChatJson::array();
  if (!system_.empty()) all.push_back({{"role", "system"}, {"content", system_}});
  for (const auto& x : messages_) all.push_back(x);
  return all;
}

const std::vector<int32_t>& Conversation::prompt_ids() const {
  if (prompt_valid_) return prompt_;
  if (!template_) {
    // A plain transcript: every content and a newline; without a generation prompt the last
    // message is continued, so its newline is left out.
    std::string text;
    if (!system_.empty()) text += system_ + "\n";
    for (const auto& x : messages_) text += x["content"].get<std::string>() + "\n";
    if (!options_.chat.add_generation_prompt && !text.empty()) text.pop_back();
    const TextSpan all{0, text.size()};
    prompt_ = tokenizer_.encode(text, {.plain_spans = options_.parse_special ? std::span<const TextSpan>() : std::span(&all, 1)});
  } else {
    // The template writes BOS itself where the model wants one: no special tokens added here.
    const RenderedPrompt prompt = template_->apply_tracked(template_messages(), options_.chat);
    prompt_ = tokenizer_.encode(prompt.text, {.add_special_tokens = false,
                                              .parse_special = true,
                                              .plain_spans = options_.parse_special ? std::span<const TextSpan>()
                                                                                    : std::span<const TextSpan>(prompt.content)});
  }
  prompt_valid_ = true;
  return prompt_;
}

void Conversation::forget_cache(Session* session) {
  cached_.clear();
  session_ = nullptr;
  if (session) session->reset();
}

GenerateResult Conversation::reply(Session& session, Sampler& sampler, const GenerateOptions& options,
                                   const std::function<bool(std::string_view)>& on_text) {
  std::vector<int32_t> ids = prompt_ids();  // a copy: the answer added below changes the prompt
  if (static_cast<int64_t>(ids.size()) >= session.context())
    throw Error("conversation", cat("the conversation (", ids.size(), " tokens) no longer fits the ", session.context(),
                                    "-token context"));
  // What the session holds is known only when it is the session of the last reply, untouched since.
  if (session_ != &session || session.position() != static_cast<int64_t>(cached_.size())) cached_.clear();
  // Reuse the cache up to the first token where the new prompt differs from what it holds.
  const size_t common =
      static_cast<size_t>(std::mismatch(cached_.begin(), cached_.end(), ids.begin(), ids.end()).first - cached_.begin());
  session.truncate(static_cast<int64_t>(common));
  cached_.resize(common);
  session_ = &session;
  GenerateResult r;
  try {
    r = generate(session, tokenizer_, sampler, ids, options, on_text);
  } catch (...) {
    forget_cache(&session);
    throw;
  }
  // What the cache holds now: the prompt and every sampled token that was fed back.
  cached_ = std::move(ids);
  cached_.insert(cached_.end(), r.tokens.begin(), r.tokens.end());
  cached_.resize(static_cast<size_t>(session.position()));
  add_message("assistant", r.text);
  return r;
}

}  // namespace moerun
