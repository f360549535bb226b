// Chat templates against transformers, byte for byte (tests/data/chat, made by
// tools/golden/make_chat_goldens.py):
//  - ChatGolden: every model template x conversation x options renders exactly what
//    tokenizer.apply_chat_template(..., tokenize=False) returned, or fails where it raised (with the
//    template's own raise_exception() message verbatim);
//  - ChatSnippet: one construct per template, rendered by transformers' jinja2 environment.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "moerun/chat_template.h"
#include "moerun/error.h"
#include "support/writer.h"

namespace {

namespace fs = std::filesystem;
using moerun::ChatJson;
using moerun::ChatOptions;
using moerun::ChatTemplate;

fs::path chat_data() { return fs::path(MOERUN_TEST_DATA) / "chat"; }

ChatJson read_json(const fs::path& path) { return ChatJson::parse(moerun::testing::read_file(path)); }

// Where two renderings first differ, with a little context, escaped so whitespace shows.
std::string first_difference(const std::string& got, const std::string& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto excerpt = [i](const std::string& s) {
    const size_t from = i < 20 ? 0 : i - 20;
    return ChatJson(s.substr(from, 60)).dump(-1, ' ', false, ChatJson::error_handler_t::replace);
  };
  return "first difference at byte " + std::to_string(i) + ": got " + excerpt(got) + ", want " + excerpt(want);
}

// The outcome the golden expects from `render`: the text, or an error (raise_exception: this message).
void check_case(const ChatJson& c, const std::string& where, const std::function<std::string()>& render) {
  if (c.contains("expected")) {
    const std::string want = c["expected"].get<std::string>();
    try {
      const std::string got = render();
      EXPECT_EQ(got, want) << where << "\n" << first_difference(got, want);
    } catch (const moerun::Error& e) {
      ADD_FAILURE() << where << ": unexpected error: " << e.what();
    }
    return;
  }
  const std::string type = c["error"]["type"].get<std::string>();
  const std::string message = c["error"]["message"].get<std::string>();
  try {
    const std::string got = render();
    ADD_FAILURE() << where << ": expected " << type << " (" << message << "), rendered "
                  << ChatJson(got).dump(-1, ' ', false, ChatJson::error_handler_t::replace);
  } catch (const moerun::Error& e) {
    // jinja2.exceptions.TemplateError itself is what raise_exception() raises.
    if (type == "TemplateError") {
      EXPECT_EQ(e.detail(), message) << where;
    }
  }
}

std::vector<std::string> golden_models() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(chat_data() / "goldens"))
    names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

class ChatGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatGolden, MatchesTransformers) {
  const std::string model = GetParam();
  const ChatJson conversations = read_json(chat_data() / "conversations.json");
  const ChatJson tools = read_json(chat_data() / "tools.json");
  const ChatJson golden = read_json(chat_data() / "goldens" / (model + ".json"));
  const ChatTemplate tmpl = ChatTemplate::load(chat_data() / "models" / model);
  int n = 0;
  for (const ChatJson& c : golden["cases"]) {
    ChatOptions opt;
    opt.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    if (!c["tools"].is_null()) opt.tools = tools[c["tools"].get<std::string>()];
    opt.kwargs = c["kwargs"];
    if (c.contains("now")) opt.now = c["now"].get<std::time_t>();
    const std::string where = model + " / " + c["conversation"].get<std::string>() +
                              " / add_generation_prompt=" + (opt.add_generation_prompt ? "true" : "false") +
                              " / tools=" + c["tools"].dump() + " / kwargs=" + c["kwargs"].dump();
    const ChatJson& messages = conversations[c["conversation"].get<std::string>()];
    check_case(c, where, [&] { return tmpl.apply(messages, opt); });
    // Tracking the conversation's bytes changes nothing in the text.
    check_case(c, where + " (apply_tracked)", [&] { return tmpl.apply_tracked(messages, opt).text; });
    ++n;
  }
  std::printf("# %s: %d cases\n", model.c_str(), n);
}

INSTANTIATE_TEST_SUITE_P(Models, ChatGolden, ::testing::ValuesIn(golden_models()),
                         [](const auto& p) { return p.param; });

struct Snippet {
  std::string name;
  ChatJson data;
};
void PrintTo(const Snippet& s, std::ostream* os) { *os << s.name; }

std::vector<Snippet> snippets() {
  std::vector<Snippet> out;
  const ChatJson all = read_json(chat_data() / "snippets.json");
  for (const ChatJson& c : all["cases"])
    out.push_back({c["name"].get<std::string>(), c});
  return out;
}

class ChatSnippet : public ::testing::TestWithParam<Snippet> {};

TEST_P(ChatSnippet, MatchesJinja2) {
  const Snippet& s = GetParam();
  // Syntax errors may surface while parsing (as jinja2 compiles) or while rendering.
  check_case(s.data, s.name + ": " + s.data["template"].get<std::string>(), [&] {
    return ChatTemplate::parse(s.data["template"].get<std::string>(), s.name).render(s.data["context"]);
  });
}

INSTANTIATE_TEST_SUITE_P(Snippets, ChatSnippet, ::testing::ValuesIn(snippets()),
                         [](const auto& p) { return p.param.name; });

}  // namespace
