// Focused tests of the chat-template renderer beyond the jinja2 goldens: error messages name the
// template and line, unsupported constructs fail instead of rendering something else, hostile
// templates (deep nesting, recursion, huge output, reference cycles) fail cleanly, and load()/apply()
// build the context the way transformers does.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "moerun/chat_template.h"
#include "moerun/error.h"
#include "support/writer.h"

namespace {

namespace fs = std::filesystem;
using moerun::ChatJson;
using moerun::ChatOptions;
using moerun::ChatTemplate;
using moerun::Error;

std::string render(const std::string& source, const ChatJson& context = ChatJson::object()) {
  return ChatTemplate::parse(source, "t").render(context);
}

// The Error a template raises (at parse or render time); fails the test when there is none.
Error error_of(const std::string& source, const ChatJson& context = ChatJson::object()) {
  try {
    const std::string out = render(source, context);
    ADD_FAILURE() << "expected an error from " << source.substr(0, 200) << ", rendered "
                  << ChatJson(out.substr(0, 200)).dump();
  } catch (const Error& e) {
    return e;
  }
  return Error("none");
}

void expect_error(const std::string& source, const std::string& where, const std::string& what_part,
                  const ChatJson& context = ChatJson::object()) {
  const Error e = error_of(source, context);
  EXPECT_EQ(e.where(), where) << source.substr(0, 200) << ": " << e.what();
  EXPECT_NE(e.detail().find(what_part), std::string::npos) << source.substr(0, 200) << ": " << e.what();
}

// --- errors name the template and the line --------------------------------------------------------

TEST(ChatTemplateErrors, SyntaxErrorsNameTheLine) {
  expect_error("line1\nline2\n{{ 1 + }}\nline4", "t:3", "unexpected");
  expect_error("{% if x %}\nopen", "t:2", "expected 'elif' or 'else' or 'endif'");
  expect_error("\n\n{% frobnicate %}", "t:3", "unknown tag 'frobnicate'");
  expect_error("{{ 'unterminated }}", "t:1", "unterminated string");
  expect_error("a\n{# open comment", "t:2", "missing end of comment");
  expect_error("{{ (1 }}", "t:1", "unexpected '}'");
  expect_error("{% break %}", "t:1", "'break' outside loop");
  expect_error("{% macro m(a=1, b) %}{% endmacro %}", "t:1", "non-default argument");
}

TEST(ChatTemplateErrors, RuntimeErrorsNameTheLine) {
  expect_error("a\nb\n{{ nope.attr }}\nc", "t:3", "'nope' is undefined");
  expect_error("{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}", "t:2", "can only concatenate str",
               {{"messages", {{{"content", "x"}}}}});
  expect_error("{{ 1 / 0 }}", "t:1", "division by zero");
  expect_error("{% set x = [1] %}\n{% set x.y = 3 %}", "t:2", "non-namespace");
}

TEST(ChatTemplateErrors, RaiseExceptionCarriesTheTemplatesMessage) {
  const Error e = error_of("ok\n{{ raise_exception('Conversation roles must alternate ' ~ 'user/assistant') }}");
  EXPECT_EQ(e.detail(), "Conversation roles must alternate user/assistant");
  EXPECT_EQ(e.where(), "t:2");
}

TEST(ChatTemplateErrors, UnknownFiltersAndTests) {
  // Names jinja2 does not know fail at parse time, as jinja2 compiles them...
  expect_error("\n{{ x|frobnicate }}", "t:2", "no filter named 'frobnicate'");
  expect_error("{{ x is frobnicated }}", "t:1", "no test named 'frobnicated'");
  // ...except under an if, where jinja2 defers them to runtime: the template works until it gets there.
  EXPECT_EQ(render("{% if false %}{{ x|frobnicate }}{% endif %}ok"), "ok");
  expect_error("{% if true %}\n{{ x|frobnicate }}{% endif %}", "t:2", "no filter named 'frobnicate'");
  // jinja2 filters we do not implement are errors when used, never silently skipped.
  expect_error("{{ [1]|pprint }}", "t:1", "'pprint' is not supported");
  expect_error("{{ 'abc'|truncate(2) }}", "t:1", "'truncate' is not supported");
  EXPECT_EQ(render("{% if false %}{{ x|groupby('a') }}{% endif %}fine"), "fine");
}

TEST(ChatTemplateErrors, UnsupportedConstructsFailInsteadOfRenderingSomethingElse) {
  expect_error("{% extends 'base' %}", "t:1", "not supported");
  expect_error("x\n{% include 'part' %}", "t:2", "not supported");
  expect_error("{% import 'm' as m %}", "t:1", "not supported");
  expect_error("{% block b %}{% endblock %}", "t:1", "not supported");
  expect_error("{% for x in y recursive %}{% endfor %}", "t:1", "recursive");
  expect_error("{{ '%s!' % 'hi' }}", "t:1", "not supported");
  expect_error("{{ 'a {}'.format(1) }}", "t:1", "not supported");
  expect_error("{{ lipsum() }}", "t:1", "not supported");
  expect_error("{{ self }}", "t:1", "not supported");
  expect_error("{{ '\\N{BULLET}' }}", "t:1", "\\N");
  // Printing an object whose Python text holds a memory address.
  expect_error("{{ [1, 2]|select('odd') }}", "t:1", "generator");
  expect_error("{{ 'x'.upper }}", "t:1", "function");
  // Python integers are unbounded; ours are 64-bit and overflow is an error.
  expect_error("{{ 2 ** 64 }}", "t:1", "overflow");
  expect_error("{{ 9223372036854775807 + 1 }}", "t:1", "overflow");
}

// --- hostile templates fail cleanly ----------------------------------------------------------------

TEST(ChatTemplateLimits, DeepNestingIsAnErrorNotACrash) {
  expect_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "t:1", "nested deeper");
  expect_error("{{ " + std::string(5000, '-') + "1 }}", "t:1", "nested deeper");
  expect_error("{{ " + std::string(3000, '[') + std::string(3000, ']') + " }}", "t:1", "nested deeper");
  std::string ifs;
  for (int i = 0; i < 3000; ++i) ifs += "{% if true %}";
  for (int i = 0; i < 3000; ++i) ifs += "{% endif %}";
  expect_error(ifs, "t:1", "nested deeper");
  // Deep but legal nesting still works.
  EXPECT_EQ(render("{{ " + std::string(40, '(') + "1" + std::string(40, ')') + " }}"), "1");
}

// The parser builds left-deep chains in loops (binary operators, .attr, [item], calls, filters,
// tests, `if` without else, elif), which its recursion bound does not see. Their trees used to be
// freed recursively, overflowing the stack (SIGSEGV in template, run and chat). Now the tree's depth
// and size are bounded in every direction and trees are freed with a work list.
std::string chain(const std::string& head, const std::string& link, int n, const std::string& tail = "") {
  std::string s = "{{ " + head;
  for (int i = 0; i < n; ++i) s += link;
  return s + tail + " }}";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(ChatTemplateLimits, HugeLeftDeepChainsAreErrorsNotCrashes) {
  for (const auto& [head, link] : std::vector<std::pair<std::string, std::string>>{
           {"1", "+1"}, {"x", ".a"}, {"'a'", "|upper"}}) {
    const std::string source = chain(head, link, 400000);  // ~0.8-2.4 MB, as in the report
    const auto t0 = std::chrono::steady_clock::now();
    const Error e = error_of(source, {{"x", 1}});
    EXPECT_EQ(e.where(), "t:1") << link;
    EXPECT_NE(e.detail().find("more than 100000 expressions and statements"), std::string::npos) << e.what();
    EXPECT_LT(seconds_since(t0), 20.0) << link << " (a few hundred ms in a Release build)";
  }
}

TEST(ChatTemplateLimits, EveryChainShapeIsBoundedInDepth) {
  // Each shape 300 steps deep: past kMaxAstDepth (256), within the node bound.
  const std::vector<std::pair<std::string, std::string>> shapes = {
      {"1", "+1"},      {"1", "-1"},         {"1", "*1"},        {"1", "**1"},      {"1", "//1"},
      {"x", ".a"},      {"x", "[0]"},        {"x", "(1)"},       {"x", "|string"},  {"1", " is divisibleby(1)"},
      {"x", " and x"},  {"x", " or x"},      {"x", " if x"},     {"1", "[0:1]"},    {"x", "|join(x)|e"}};
  for (const auto& [head, link] : shapes)
    expect_error(chain(head, link, 300), "t:1", "nested deeper than 256 levels");
  // Flat n-ary nodes (~, comparison chains, lists) are not deep: the node count bounds them.
  expect_error(chain("x", " ~ x", 120000), "t:1", "more than 100000");
  expect_error(chain("x", " == x", 120000), "t:1", "more than 100000");
  std::string list = "{{ [";
  for (int i = 0; i < 120000; ++i) list += "1,";
  expect_error(list + "1] }}", "t:1", "more than 100000");
  // A syntax error at the end of a long chain unwinds it (freed while the error propagates).
  expect_error(chain("1", "+1", 45000, " +"), "t:1", "unexpected");
}

TEST(ChatTemplateLimits, ChainsWithinTheBoundsRender) {
  EXPECT_EQ(render(chain("1", "+1", 249)), "250");
  EXPECT_EQ(render("{% set ns = namespace() %}{% set ns.a = ns %}" + chain("ns", ".a", 250, " is defined")), "True");
  EXPECT_EQ(render(chain("'a'", "|upper", 250)), "A");
  EXPECT_EQ(render(chain("x", " ~ 'b'", 40000), {{"x", "a"}}), "a" + std::string(40000, 'b'));
  std::string list = "{{ [";
  for (int i = 0; i < 40000; ++i) list += "1,";
  EXPECT_EQ(render(list + "1]|length }}"), "40001");
}

TEST(ChatTemplateLimits, StatementChainsAreBoundedToo) {
  // elif nests each branch in the previous one's else: a chain of them is a deep tree.
  auto elifs = [](int n) {
    std::string s = "{% if x == -1 %}no";
    for (int i = 0; i < n; ++i) s += "{% elif x == " + std::to_string(i) + " %}" + std::to_string(i);
    return s + "{% else %}none{% endif %}";
  };
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(elifs(100000), "t:1", "more than 100000");
  expect_error(elifs(5000), "t:1", "nested deeper than 256 levels");
  EXPECT_LT(seconds_since(t0), 20.0);
  EXPECT_EQ(render(elifs(200), {{"x", 199}}), "199");
  EXPECT_EQ(render(elifs(200), {{"x", 1000}}), "none");
  // Long runs of statements are flat, but count.
  std::string sets;
  for (int i = 0; i < 60000; ++i) sets += "{% set x = 1 %}";
  expect_error(sets, "t:1", "more than 100000");
  EXPECT_EQ(render(sets.substr(0, 20000 * 15) + "{{ x }}"), "1");
}

// One rendering may create 512 MiB in total (strings, list items, output): a template that allocates
// in a loop used to reach gigabytes (7 GB resident) or run for minutes.
TEST(ChatTemplateLimits, RuntimeAllocationIsBudgeted) {
  const std::vector<std::string> hostile = {
      "{% for i in range(100) %}{% set s = 'x' * 200000000 %}{% endfor %}",
      "{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = ns.l + ['x' * 200000000] %}{% endfor %}",
      "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ ('x' * 10000) %}{% endfor %}",
      "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + [i] %}{% endfor %}",
      "{% for i in range(100000) %}{% set s %}{{ 'x' * 10000 }}{% endset %}{% endfor %}",
      "{% macro m(n) %}{{ 'x' * 1000000 }}{% endmacro %}{% for i in range(1000) %}{% set y = m(i) %}{% endfor %}",
  };
  for (const std::string& source : hostile) {
    const auto t0 = std::chrono::steady_clock::now();
    const Error e = error_of(source);
    EXPECT_EQ(e.detail(), "rendering allocated more than 512 MiB (strings, lists and output together)") << source;
    EXPECT_EQ(e.where(), "t:1") << e.what();
    EXPECT_LT(seconds_since(t0), 20.0) << source << " (well under a second in a Release build)";
  }
  // The budget is per rendering: the next one starts from zero, and a failed one leaves none behind.
  const ChatTemplate t = ChatTemplate::parse("{% set s = 'x' * 200000000 %}{{ s|length }}", "t");
  EXPECT_EQ(t.render(ChatJson::object()), "200000000");
  EXPECT_EQ(t.render(ChatJson::object()), "200000000");
}

// Operations whose scratch memory grew with a string's length (a table per character, a part per
// separator) on a 200 MB string reached gigabytes before any limit looked; now they stay linear.
TEST(ChatTemplateLimits, LongStringsDoNotMultiplyMemory) {
  auto expect_message = [](const std::string& source, const std::string& part) {
    const auto t0 = std::chrono::steady_clock::now();
    const Error e = error_of(source);
    EXPECT_NE(e.detail().find(part), std::string::npos) << source << ": " << e.what();
    EXPECT_LT(seconds_since(t0), 20.0) << source;
  };
  // More parts than a list may hold fail before they are all made.
  expect_message("{% for c in 'x' * 5000000 %}{% endfor %}", "sequence of more than 4194304 items");
  expect_message("{{ ('x,' * 5000000).split(',')|length }}", "sequence of more than 4194304 items");
  expect_message("{{ ('x ' * 5000000).split()|length }}", "sequence of more than 4194304 items");
  expect_message("{{ ('x\n' * 5000000).splitlines()|length }}", "sequence of more than 4194304 items");
  // A strftime buffer and a 4-byte fill past 256 MiB are refused before they are allocated.
  expect_message("{{ strftime_now('%Y' * 20000000) }}", "longer than 256 MiB");
  expect_message("{{ 'x'.center(70000000, '\U0001F600') }}", "longer than 256 MiB");
  // Searching, indexing, slicing and stripping walk the bytes (no copy as code points).
  EXPECT_EQ(render("{% set s = 'x' * 20000000 %}{{ s|first }}{{ s|last }}{{ s[-1] }}{{ s[1:]|length }}"
                   "{{ s.startswith('xx') }}{{ s.find('y') }}{{ s.rfind('x') }}{{ s.count('xx') }}{{ s|trim|length }}"),
            "xxx19999999True-1199999991000000020000000");
  EXPECT_EQ(render("{% set s = 'ab' * 2000000 %}{{ s[::-3]|length }}{{ s[::2][-2:] }}{{ s.split('b')|length }}"),
            "1333334aa2000001");
}

// A conversation of several MB through every real template: copying content a few times is far
// inside the budget.
TEST(ChatTemplateLimits, BigConversationsRender) {
  std::string para;
  while (para.size() < 250000) para += "The quick brown fox jumps over the lazy dog <" + std::to_string(para.size()) + ">. ";
  ChatJson messages = ChatJson::array();
  messages.push_back({{"role", "system"}, {"content", para}});
  for (int i = 0; i < 40; ++i) messages.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", para}});
  const size_t content_bytes = 41 * para.size();  // ~10 MB
  for (const auto& entry : fs::directory_iterator(fs::path(MOERUN_TEST_DATA) / "chat" / "models")) {
    const ChatTemplate t = ChatTemplate::load(entry.path());
    std::string out;
    try {
      out = t.apply(messages);
    } catch (const Error& e) {  // a template may refuse the system message or the roles: not a limit
      EXPECT_EQ(std::string(e.what()).find("allocated"), std::string::npos) << entry.path() << ": " << e.what();
      continue;
    }
    EXPECT_GE(out.size(), content_bytes - 2 * para.size()) << entry.path();
    EXPECT_EQ(t.apply_tracked(messages).text.size(), out.size()) << entry.path();
  }
}

TEST(ChatTemplateLimits, RecursionAndDeepValuesAreErrors) {
  EXPECT_NE(error_of("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}").detail().find("recursion"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}")
                .detail()
                .find("nested deeper"),
            std::string::npos);
  // A namespace holding itself: printing it cannot recurse forever, and the cycle is freed (LSan).
  EXPECT_NE(error_of("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}").detail().find("nested"),
            std::string::npos);
  EXPECT_EQ(render("{% set ns = namespace() %}{% set ns.me = ns %}{% set ns.loop = none %}"
                   "{% for x in [1] %}{% set ns.loop = loop %}{% endfor %}ok"),
            "ok");
  // Deeply nested context JSON is rejected when it enters.
  ChatJson deep = 1;
  for (int i = 0; i < 1000; ++i) deep = ChatJson::array({deep});
  EXPECT_THROW(render("{{ x }}", {{"x", deep}}), Error);
}

TEST(ChatTemplateLimits, HugeOutputAndLoopsAreErrors) {
  EXPECT_NE(error_of("{{ 'x' * 1000000000 }}").detail().find("MiB"), std::string::npos);
  EXPECT_NE(error_of("{{ range(100001)|length }}").detail().find("MAX_RANGE"), std::string::npos);
  EXPECT_NE(error_of("{% set s = 'x' * 1000000 %}{% for i in range(1000) %}{{ s }}{% endfor %}").detail().find("MiB"),
            std::string::npos);
  EXPECT_NE(error_of("{% for i in range(1001) %}{% for j in range(1000) %}{% endfor %}{% endfor %}")
                .detail()
                .find("iterations"),
            std::string::npos);
}

TEST(ChatTemplateLimits, OversizedContextStringIsAnError) {
  // Used to escape as an internal exception type instead of moerun::Error.
  ChatJson ctx = ChatJson::object();
  ctx["x"] = std::string((size_t{256} << 20) + 1, 'x');
  try {
    render("{{ x|length }}", ctx);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "x");
    EXPECT_NE(e.detail().find("longer than 256 MiB"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplateLimits, InvalidUtf8IsRejected) {
  EXPECT_THROW(ChatTemplate::parse("bad \xff byte", "t"), Error);
  EXPECT_THROW(render("{{ x }}", {{"x", std::string("bad \xc3")}}), Error);
  EXPECT_THROW(render("{{ '\\ud800' }}"), Error);  // a lone surrogate cannot be UTF-8
}

// Seeded mutations of every golden template (bytes deleted, duplicated or swapped, Jinja tokens
// inserted) must render or fail with moerun::Error: never crash, hang, or throw anything else. Under
// ASan/UBSan this is a small fuzzer; MOERUN_CHAT_FUZZ_ROUNDS raises the count for a longer run.
TEST(ChatTemplateFuzz, MutatedTemplatesFailCleanly) {
  const char* rounds_env = std::getenv("MOERUN_CHAT_FUZZ_ROUNDS");
  const int rounds = rounds_env ? std::atoi(rounds_env) : 60;
  const std::vector<std::string> pieces = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "(", ")", "[", "]", "{", "}",
                                           "'", "\"", "|", ".", ",", ":", " if ", " else ", " for x in ", "{% endfor %}",
                                           "{% endif %}", " loop.", " ns.", "~", "*", "**", "\\", "\n", "é", "\xff",
                                           " is ", " not ", "()", "[0]", "[1:]", "|tojson", "|items", "|join", "0", "1e9"};
  const fs::path data = fs::path(MOERUN_TEST_DATA) / "chat";
  const ChatJson conversations = ChatJson::parse(moerun::testing::read_file(data / "conversations.json"));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&state](uint64_t n) {  // splitmix64
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (z ^ (z >> 31)) % n;
  };
  int rendered = 0, failed = 0;
  for (const auto& entry : fs::directory_iterator(data / "models")) {
    const std::string source = ChatTemplate::load(entry.path()).source();
    for (int r = 0; r < rounds; ++r) {
      std::string t = source;
      for (uint64_t m = 0, n = 1 + next(4); m < n && !t.empty(); ++m) {
        const size_t at = next(t.size()), len = 1 + next(8);
        switch (next(4)) {
          case 0: t.erase(at, len); break;
          case 1: t.insert(at, t.substr(at, len)); break;
          case 2: std::swap(t[at], t[next(t.size())]); break;
          default: t.insert(at, pieces[next(pieces.size())]); break;
        }
      }
      auto it = conversations.begin();
      std::advance(it, static_cast<long>(next(conversations.size())));
      ChatOptions opt;
      opt.add_generation_prompt = next(2) == 0;
      try {
        ChatTemplate::parse(t, "fuzz").apply(*it, opt);
        ++rendered;
      } catch (const Error&) {
        ++failed;
      }
    }
  }
  std::printf("# %d mutated templates rendered, %d failed with moerun::Error\n", rendered, failed);
}

// --- values and context ----------------------------------------------------------------------------

TEST(ChatTemplateRender, KeepsJsonKeyOrder) {
  const ChatJson ctx = ChatJson::parse(R"({"tool": {"name": "f", "description": "d", "parameters": {"b": 1, "a": 2}}})");
  EXPECT_EQ(render("{{ tool|tojson }}", ctx),
            R"({"name": "f", "description": "d", "parameters": {"b": 1, "a": 2}})");
  EXPECT_EQ(render("{% for k, v in tool.parameters.items() %}{{ k }}{% endfor %}", ctx), "ba");
}

TEST(ChatTemplateRender, AcceptsPlainNlohmannJson) {
  // nlohmann::json converts implicitly (its keys arrive sorted, as that type stores them).
  const nlohmann::json ctx = {{"b", 1}, {"a", {{"z", 1}, {"y", 2}}}};
  EXPECT_EQ(ChatTemplate::parse("{{ a|tojson }}", "t").render(ctx), R"({"y": 2, "z": 1})");
}

TEST(ChatTemplateRender, JsonNumbersKeepTheirPythonType) {
  const ChatJson ctx = ChatJson::parse(R"({"i": 3, "f": 3.0, "big": 1e300, "neg": -0.0})");
  EXPECT_EQ(render("{{ i }} {{ f }} {{ big }} {{ neg }} {{ [i, f]|tojson }}", ctx), "3 3.0 1e+300 -0.0 [3, 3.0]");
  // Beyond int64: Python would print it; we refuse rather than print something else.
  EXPECT_THROW(render("{{ u }}", ChatJson::parse(R"({"u": 18446744073709551615})")), Error);
}

TEST(ChatTemplateRender, StrftimeNowReadsTheGivenClock) {
  const std::time_t noon_utc = 1721995200;  // 2024-07-26 12:00 UTC: the same date in every time zone
  EXPECT_EQ(ChatTemplate::parse("{{ strftime_now('%d %b %Y') }}", "t").render(ChatJson::object(), noon_utc),
            "26 Jul 2024");
  EXPECT_EQ(render("{{ strftime_now('%Y')|length }}"), "4");
}

TEST(ChatTemplateRender, ConcurrentRendersOfOneTemplate) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m|length %}{% endfor %}{{ ns.n }}", "t");
  const ChatJson ctx = {{"messages", {"ab", "cde", "f"}}};
  std::vector<std::thread> threads;
  std::vector<std::string> out(8);
  for (size_t i = 0; i < out.size(); ++i)
    threads.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) out[i] = t.render(ctx);
    });
  for (auto& th : threads) th.join();
  for (const std::string& s : out) EXPECT_EQ(s, "6");
}

// --- load() and apply() ----------------------------------------------------------------------------

fs::path model_dir(const std::string& name, const ChatJson& config) {
  const fs::path dir = moerun::testing::fresh_dir("chat_" + name);
  if (!config.is_null()) moerun::testing::write_file(dir / "tokenizer_config.json", config.dump());
  return dir;
}

TEST(ChatTemplateLoad, ReadsTheConfigTemplateAndSpecialTokens) {
  const fs::path dir = model_dir("config", {
      {"bos_token", {{"__type", "AddedToken"}, {"content", "<s>"}, {"lstrip", false}}},
      {"eos_token", "</s>"},
      {"pad_token", nullptr},
      {"unk_token", {{"content", "<unk>"}}},
      {"chat_template", "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}{{ pad_token is defined }}"},
  });
  const ChatTemplate t = ChatTemplate::load(dir);
  EXPECT_EQ(t.special_tokens(), (ChatJson{{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}}));
  EXPECT_EQ(t.apply({{{"role", "user"}, {"content", "hi"}}}), "<s>[hi]</s>False");
  EXPECT_NE(t.name().find("tokenizer_config.json"), std::string::npos);
}

TEST(ChatTemplateLoad, TemplateFilesTakePriority) {
  const fs::path dir = model_dir("files", {{"chat_template", "from config"}, {"eos_token", "E"}});
  moerun::testing::write_file(dir / "chat_template.jinja", "from jinja file {{ eos_token }}\n");
  EXPECT_EQ(ChatTemplate::load(dir).apply({{{"role", "user"}}}), "from jinja file E");

  const fs::path legacy = model_dir("legacy", ChatJson{{"eos_token", "E"}});
  moerun::testing::write_file(legacy / "chat_template.json", R"({"chat_template": "legacy {{ messages|length }}"})");
  EXPECT_EQ(ChatTemplate::load(legacy).apply({{{"role", "user"}}}), "legacy 1");
}

TEST(ChatTemplateLoad, NamedTemplatesPickToolUseWhenToolsAreGiven) {
  const fs::path dir = model_dir("named", {{"chat_template",
                                            {{{"name", "default"}, {"template", "default"}},
                                             {{"name", "tool_use"}, {"template", "tools: {{ tools|length }}"}}}}});
  const ChatTemplate t = ChatTemplate::load(dir);
  EXPECT_EQ(t.apply({{{"role", "user"}}}), "default");
  ChatOptions opt;
  opt.tools = ChatJson::array({{{"type", "function"}}});
  EXPECT_EQ(t.apply({{{"role", "user"}}}, opt), "tools: 1");

  const fs::path no_default = model_dir("no_default", {{"chat_template", {{{"name", "tool_use"}, {"template", "x"}}}}});
  EXPECT_THROW(ChatTemplate::load(no_default), Error);
}

TEST(ChatTemplateLoad, MissingTemplateNamesTheDirectory) {
  const fs::path dir = model_dir("none", ChatJson{{"eos_token", "E"}});
  try {
    ChatTemplate::load(dir);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), dir.string());
  }
  EXPECT_THROW(ChatTemplate::load(dir / "missing"), Error);
  const fs::path bad = model_dir("bad_syntax", {{"chat_template", "line 1\n{% if %}"}});
  try {
    ChatTemplate::load(bad);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), (bad / "tokenizer_config.json").string() + " chat_template:2");
  }
}

TEST(ChatTemplateApply, BuildsTheContextAsTransformers) {
  const ChatTemplate t = ChatTemplate::parse(
      "{% for m in messages %}{{ m.keys()|list }}{% endfor %}|{{ add_generation_prompt }}|{{ tools }}|{{ documents }}"
      "|{{ enable_thinking }}",
      "t");
  // Null values are dropped; reasoning is aliased as "thinking" first and "reasoning_content" last.
  const ChatJson messages = ChatJson::parse(R"([{"role": "assistant", "content": null, "reasoning": "r", "x": 1}])");
  ChatOptions opt;
  opt.kwargs = {{"enable_thinking", false}};
  EXPECT_EQ(t.apply(messages, opt), "['thinking', 'role', 'reasoning', 'x', 'reasoning_content']|True|None|None|False");
  opt.add_generation_prompt = false;
  EXPECT_EQ(t.apply(ChatJson::parse(R"([{"role": "user"}])"), opt), "['role']|False|None|None|False");
}

TEST(ChatTemplateApply, KwargsOverrideSpecialTokens) {
  const fs::path dir = model_dir("kwargs", {{"bos_token", "<s>"}, {"chat_template", "{{ bos_token }}|{{ extra }}"}});
  ChatOptions opt;
  opt.kwargs = {{"bos_token", "[BOS]"}, {"extra", {1, 2}}};
  EXPECT_EQ(ChatTemplate::load(dir).apply({{{"role", "user"}}}, opt), "[BOS]|[1, 2]");
}

TEST(ChatTemplateApply, RejectsWhatTransformersRejects) {
  const ChatTemplate t = ChatTemplate::parse("x", "t");
  EXPECT_THROW(t.apply(ChatJson::array()), Error);                    // empty conversation
  EXPECT_THROW(t.apply(ChatJson::array({"not an object"})), Error);   // messages are dicts
  EXPECT_THROW(t.apply(ChatJson::object()), Error);                   // not a list
  ChatOptions opt;
  opt.tools = {{"type", "function"}};  // a dict, not a list of them
  EXPECT_THROW(t.apply({{{"role", "user"}}}, opt), Error);
  opt.tools = nullptr;
  opt.kwargs = {{"messages", 1}};  // render(messages=..., **kwargs) would be a duplicate keyword
  EXPECT_THROW(t.apply({{{"role", "user"}}}, opt), Error);
}

TEST(ChatTemplateApply, RealTemplateEmitsOneBos) {
  // MODELS.md §8: Llama-3 templates write BOS themselves, so the prompt starts with exactly one.
  const ChatTemplate t = ChatTemplate::load(fs::path(MOERUN_TEST_DATA) / "chat" / "models" / "llama3_1");
  const std::string prompt = t.apply(ChatJson::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])"));
  EXPECT_EQ(prompt,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
