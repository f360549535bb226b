#include "moerun/chat_template.h"

#include <utility>
#include <vector>

#include "chat/interpreter.h"
#include "chat/json.h"
#include "chat/parser.h"
#include "io/json_util.h"
#include "moerun/error.h"

namespace moerun {

namespace fs = std::filesystem;

namespace {

std::shared_ptr<const chat::Program> compile(const std::string& source, const std::string& name) {
  try {
    return std::make_shared<const chat::Program>(chat::parse_template(source, name));
  } catch (const chat::Fault& f) {  // a value limit hit while parsing (a 256 MiB literal)
    throw Error(name, f.message);
  }
}

// A special token in tokenizer_config.json: a string, or an AddedToken object {"content": ...}.
std::optional<std::string> token_text(const io::Json& j, const std::string& file, const std::string& key) {
  if (j.is_null()) return std::nullopt;
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  throw Error(file, key + ": expected a string or an object with \"content\", found " + io::brief(j));
}

struct Sources {
  std::string name, source;
  std::optional<std::string> tool_use;
};

// tokenizer_config.json / chat_template.json "chat_template": a string, or [{name, template}, ...].
bool read_template_field(const io::Json& field, const std::string& name, Sources& out) {
  if (field.is_null()) return false;
  out.name = name;
  if (field.is_string()) {
    out.source = field.get<std::string>();
    return true;
  }
  if (!field.is_array()) throw Error(name, "expected a string or a list of {name, template}, found " + io::brief(field));
  bool has_default = false;
  for (const io::Json& t : field) {
    if (!t.is_object() || !t.contains("name") || !t.contains("template") || !t["name"].is_string() ||
        !t["template"].is_string())
      throw Error(name, "each entry must be {\"name\": string, \"template\": string}");
    const std::string n = t["name"].get<std::string>();
    if (n == "default") {
      out.source = t["template"].get<std::string>();
      has_default = true;
    } else if (n == "tool_use") {
      out.tool_use = t["template"].get<std::string>();
    }
  }
  if (!has_default) throw Error(name, "several chat templates but none named \"default\"");
  return true;
}

}  // namespace

ChatTemplate ChatTemplate::parse(const std::string& source, const std::string& name) {
  ChatTemplate t;
  t.name_ = name;
  t.source_ = source;
  t.program_ = compile(source, name);
  return t;
}

ChatTemplate ChatTemplate::load(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir)) throw Error(model_dir.string(), "not a directory");
  const fs::path config_path = model_dir / "tokenizer_config.json";
  io::Json config = io::Json::object();
  if (!io::find_regular_file(config_path).empty()) {
    config = io::parse_json_text(io::read_text_file(config_path), config_path.string());
    if (!config.is_object()) throw Error(config_path.string(), "expected a JSON object");
  }

  // Separate template files take priority over tokenizer_config.json, as in transformers.
  Sources src;
  const fs::path jinja = model_dir / "chat_template.jinja";
  const fs::path legacy = model_dir / "chat_template.json";
  if (!io::find_regular_file(jinja).empty()) {
    src.name = jinja.string();
    src.source = io::read_text_file(jinja);
    const fs::path tool_use = model_dir / "additional_chat_templates" / "tool_use.jinja";
    if (!io::find_regular_file(tool_use).empty()) src.tool_use = io::read_text_file(tool_use);
  } else if (config.contains("chat_template") &&
             read_template_field(config["chat_template"], config_path.string() + " chat_template", src)) {
  } else if (!io::find_regular_file(legacy).empty()) {
    const io::Json j = io::parse_json_text(io::read_text_file(legacy), legacy.string());
    if (!j.is_object() || !j.contains("chat_template") ||
        !read_template_field(j["chat_template"], legacy.string() + " chat_template", src))
      throw Error(legacy.string(), "no \"chat_template\" field");
  } else {
    throw Error(model_dir.string(),
                "no chat template (looked for chat_template.jinja, \"chat_template\" in tokenizer_config.json, "
                "chat_template.json)");
  }

  ChatTemplate t = parse(src.source, src.name);
  if (src.tool_use) t.tool_use_ = compile(*src.tool_use, src.name + " (tool_use)");
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (config.contains(key))
      if (auto text = token_text(config[key], config_path.string(), key)) t.special_tokens_[key] = *text;
  if (config.contains("extra_special_tokens") && config["extra_special_tokens"].is_object())
    for (const auto& [k, v] : config["extra_special_tokens"].items())
      if (auto text = token_text(v, config_path.string(), "extra_special_tokens." + k)) t.special_tokens_[k] = *text;
  return t;
}

namespace {

// Renders `context`; with `track`, the strings of messages, tools and documents are marked as content.
chat::Rendered run(const chat::Program& program, const ChatJson& context, std::optional<std::time_t> now,
                   bool track = false) {
  if (!context.is_object()) throw Error(program.name, "the render context must be a JSON object");
  std::vector<std::pair<std::string, chat::Value>> vars;
  for (const auto& [k, v] : context.items()) {
    const bool content = track && (k == "messages" || k == "tools" || k == "documents");
    vars.emplace_back(k, chat::from_json(v, k, content));
  }
  chat::Env env;
  env.now = now;
  try {
    return chat::render_program(program, std::move(vars), env);
  } catch (const chat::Fault& f) {
    throw Error(program.name + ":" + std::to_string(f.line), f.message);
  }
}

}  // namespace

std::string ChatTemplate::render(const ChatJson& context, std::optional<std::time_t> now) const {
  return run(*program_, context, now).text;
}

std::string ChatTemplate::apply(const ChatJson& messages, const ChatOptions& options) const {
  return apply_impl(messages, options, false).text;
}

RenderedPrompt ChatTemplate::apply_tracked(const ChatJson& messages, const ChatOptions& options) const {
  return apply_impl(messages, options, true);
}

RenderedPrompt ChatTemplate::apply_impl(const ChatJson& messages, const ChatOptions& options, bool track) const {
  if (!messages.is_array()) throw Error(name_, "messages must be a JSON list of message objects");
  if (messages.empty()) throw Error(name_, "cannot apply a chat template to an empty conversation");
  if (!options.tools.is_null() && !options.tools.is_array())
    throw Error(name_, "tools must be a list of JSON schemas");
  for (const ChatJson& tool : options.tools.is_array() ? options.tools : ChatJson::array())
    if (!tool.is_object()) throw Error(name_, "tools should be JSON schemas (objects), found " + std::string(tool.type_name()));
  if (!options.documents.is_null() && !options.documents.is_array())
    throw Error(name_, "documents must be a list of objects");
  for (const ChatJson& doc : options.documents.is_array() ? options.documents : ChatJson::array())
    if (!doc.is_object()) throw Error(name_, "documents should be a list of dicts with 'title' and 'text' keys");
  if (!options.kwargs.is_object()) throw Error(name_, "template kwargs must be a JSON object");

  // transformers' _normalize_chat_messages: drop keys whose value is None (templates handle a missing
  // key but print "None" for a null one); then _alias_reasoning_fields: the first of
  // reasoning_content / thinking / reasoning is also given as "thinking" (first) and
  // "reasoning_content" (last).
  ChatJson chat = ChatJson::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatJson& m = messages[i];
    if (!m.is_object()) throw Error(name_, "message " + std::to_string(i) + " is not an object");
    ChatJson clean = ChatJson::object();
    for (const auto& [k, v] : m.items())
      if (!v.is_null()) clean[k] = v;
    for (const char* field : {"reasoning_content", "thinking", "reasoning"}) {
      if (!clean.contains(field)) continue;
      const ChatJson reasoning = clean[field];
      ChatJson aliased = ChatJson::object();
      aliased["thinking"] = reasoning;
      for (const auto& [k, v] : clean.items())
        if (k != "thinking") aliased[k] = v;
      aliased["reasoning_content"] = reasoning;
      clean = std::move(aliased);
      break;
    }
    chat.push_back(std::move(clean));
  }

  // render(messages=..., tools=..., documents=..., add_generation_prompt=..., **special_tokens, **kwargs)
  ChatJson context = ChatJson::object();
  context["messages"] = std::move(chat);
  context["tools"] = options.tools;
  context["documents"] = options.documents;
  context["add_generation_prompt"] = options.add_generation_prompt;
  for (const auto& [k, v] : options.kwargs.items())
    if (context.contains(k)) throw Error(name_, "template kwargs must not set '" + k + "' (pass it as an option)");
  for (const auto& [k, v] : special_tokens_.items())
    if (!options.kwargs.contains(k)) context[k] = v;
  for (const auto& [k, v] : options.kwargs.items()) context[k] = v;

  const bool tools = !options.tools.is_null();
  chat::Rendered r = run(tools && tool_use_ ? *tool_use_ : *program_, context, options.now, track);
  return {std::move(r.text), std::move(r.spans)};
}

}  // namespace moerun
