#pragma once
// Conversation: a chat as the library keeps it -- the system prompt and the messages -- turned into
// prompt token ids with the model's chat template and tokenizer, and answered through a Session
// whose KV cache it reuses across turns. `moerun chat` and `moerun run` are thin loops around it,
// and an OpenAI-style server would be one too (set_messages() from the request, reply(), the
// answer's text and token counts back).
//
// Prompt ids. The template renders the system prompt (when set) and the messages, plus the header
// that opens the assistant's turn (ChatOptions::add_generation_prompt), and the text is encoded
// without added special tokens (the template writes BOS itself where the model wants one). Text
// that came from the conversation -- what a user typed, a loaded file, a request -- is encoded as
// plain text: "<|im_end|>" typed in a message stays those characters, only the template's own
// markup yields control tokens (ChatTemplate::apply_tracked, EncodeOptions::plain_spans), unless
// ConversationOptions::parse_special. A model without a chat template gets a plain transcript:
// every message's content (the system prompt first) followed by a newline, the last newline left
// out without a generation prompt (the model then continues the last message).
//
// Cache reuse. A Conversation remembers the tokens the session it last replied through holds: the
// prompt and every sampled token that was fed back. The next reply truncates the session to the
// longest common prefix of those and the new prompt and prefills only the rest. A different
// session, or one whose position changed behind the conversation's back, is started from empty.
//
// Not thread-safe: one thread uses a conversation (and its session) at a time.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/chat_template.h"
#include "moerun/engine.h"
#include "moerun/generate.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"

namespace moerun {

struct ConversationOptions {
  // Let added-token text inside the messages become control tokens, as transformers'
  // apply_chat_template(tokenize=True) does (moerun's --parse-special). false: it stays text.
  bool parse_special = false;
  ChatOptions chat{};  // add_generation_prompt, tools, documents and template kwargs for every render
};

class Conversation {
 public:
  // `chat_template`: the model's (ChatTemplate::load), or nullopt when it has none.
  Conversation(Tokenizer tokenizer, std::optional<ChatTemplate> chat_template, ConversationOptions options = {});

  // --- what is said -----------------------------------------------------------------------------
  const std::string& system() const noexcept { return system_; }
  void set_system(std::string system);  // "": no system message (a template's default may apply)
  // The messages, without the system prompt: objects with a string "role" and, usually, "content".
  const ChatJson& messages() const noexcept { return messages_; }
  // Replaces the messages. Error (the conversation unchanged) unless a list of objects with a string
  // "role" each; without a chat template every "content" must be a string too.
  void set_messages(ChatJson messages);
  void add_message(std::string role, std::string content);
  void pop_message();  // drops the last message, if any
  void clear();        // drops every message; keeps the system prompt

  // {"system": "...", "messages": [...]}: the conversation as a file holds it (moerun chat's /save).
  ChatJson to_json() const;
  // The inverse of to_json() ("system" may be missing or null). Error (where "conversation",
  // naming the field or message) and the conversation unchanged when `j` is not one.
  void from_json(const ChatJson& j);

  // --- the prompt -------------------------------------------------------------------------------
  bool has_template() const noexcept { return template_.has_value(); }
  const Tokenizer& tokenizer() const noexcept { return tokenizer_; }
  const ConversationOptions& options() const noexcept { return options_; }
  void set_options(ConversationOptions options);
  // The system message (when set) and the messages: what the template renders.
  ChatJson template_messages() const;
  // The prompt ids of the conversation as it stands. Rendered once per change of the conversation
  // (reply() uses the same ids, so checking their length first costs nothing).
  const std::vector<int32_t>& prompt_ids() const;

  // --- answering --------------------------------------------------------------------------------
  // Generates the assistant's next message through `session`: truncates the session to the longest
  // common prefix of what it holds and prompt_ids(), runs generate() (which prefills the rest), and
  // appends {"role": "assistant", "content": the text} to the messages, whatever the finish reason
  // (an interrupted answer keeps what was produced). Throws Error, changing nothing, when the
  // prompt leaves no room for an answer (prompt_ids().size() >= session.context()). When generation
  // itself throws, the messages are unchanged and the session is reset (what its cache holds is
  // not known any more).
  GenerateResult reply(Session& session, Sampler& sampler, const GenerateOptions& options,
                       const std::function<bool(std::string_view)>& on_text);

  // The tokens the session of the last reply holds, as far as this conversation knows.
  const std::vector<int32_t>& cached_tokens() const noexcept { return cached_; }
  // Forgets the cache (the next reply prefills everything) and, when given, resets that session.
  void forget_cache(Session* session = nullptr);

 private:
  void changed() { prompt_valid_ = false; }

  Tokenizer tokenizer_;
  std::optional<ChatTemplate> template_;
  ConversationOptions options_;
  std::string system_;
  ChatJson messages_ = ChatJson::array();
  mutable std::vector<int32_t> prompt_;  // prompt_ids() of the conversation as it stands
  mutable bool prompt_valid_ = false;
  const Session* session_ = nullptr;     // the session cached_ describes
  std::vector<int32_t> cached_;
};

}  // namespace moerun
