// ChatTemplate::apply_tracked: which bytes of the prompt came from the conversation. Operations that
// only move bytes keep the spans exact; others mark their whole result as content; the template's own
// text, the special tokens and kwargs are never content. Results are shown with content in [brackets].

#include <gtest/gtest.h>

#include <string>

#include "moerun/chat_template.h"
#include "moerun/error.h"

namespace {

using moerun::ChatJson;
using moerun::ChatOptions;
using moerun::ChatTemplate;
using moerun::RenderedPrompt;

// The prompt with each content span in brackets; checks that the spans are sorted, disjoint,
// non-adjacent and inside the text.
std::string marked(const RenderedPrompt& p) {
  std::string out;
  size_t at = 0;
  for (const moerun::TextSpan& s : p.content) {
    EXPECT_LT(s.begin, s.end);
    EXPECT_LE(s.end, p.text.size());
    EXPECT_TRUE(at == 0 || s.begin > at) << "spans must be sorted, disjoint and not touching";
    if (s.begin < at || s.end > p.text.size()) return "bad spans";
    out += p.text.substr(at, s.begin - at) + "[" + p.text.substr(s.begin, s.end - s.begin) + "]";
    at = s.end;
  }
  return out + p.text.substr(at);
}

// Renders `source` over one user message whose content is `content` (as `c` and messages[0].content).
std::string track(const std::string& source, const ChatJson& content = "hi", const ChatOptions& opt = {}) {
  const ChatTemplate t = ChatTemplate::parse("{% set c = messages[0].content %}" + source, "t");
  const ChatJson messages = {{{"role", "user"}, {"content", content}}};
  const RenderedPrompt p = t.apply_tracked(messages, opt);
  EXPECT_EQ(p.text, t.apply(messages, opt)) << source;
  return marked(p);
}

TEST(ContentSpans, OutputAndConcatenationAreExact) {
  EXPECT_EQ(track("<s>{{ c }}</s>"), "<s>[hi]</s>");
  EXPECT_EQ(track("{{ '<s>' + c + '</s>' }}"), "<s>[hi]</s>");
  EXPECT_EQ(track("{{ '<s>' ~ c ~ 1 ~ c }}"), "<s>[hi]1[hi]");
  EXPECT_EQ(track("{{ c + c }}"), "[hihi]");  // touching spans merge
  EXPECT_EQ(track("{{ c|string }}{{ c|safe }}|{{ c|default('x') }}"), "[hihi]|[hi]");
  EXPECT_EQ(track("{{ messages[0]['content'] }}{{ messages[0].role }}"), "[hiuser]");
  EXPECT_EQ(track("{% for k in messages[0] %}<{{ k }}>{% endfor %}"), "<[role]><[content]>");
  EXPECT_EQ(track("{% set ns = namespace(p='') %}{% set ns.p = ns.p + '|' + c %}{% set ns.p = ns.p + '|' + c %}"
                  "{{ ns.p }}"),
            "|[hi]|[hi]");
}

TEST(ContentSpans, BlocksAndMacrosCarryTheirSpans) {
  EXPECT_EQ(track("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(c) }}{{ m('t') }}"), "<[hi]><t>");
  EXPECT_EQ(track("{% set b %}({{ c }}){% endset %}{{ b }}{{ b|length }}"), "([hi])4");
  EXPECT_EQ(track("{% filter trim %}  <{{ c }}>  {% endfilter %}"), "<[hi]>");
  EXPECT_EQ(track("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}{{ c }}{% endcall %}"), "<[hi]>");
  EXPECT_EQ(track("{% for x in [c, 'y'] %}{{ loop.index }}{{ x }}{% endfor %}"), "1[hi]2y");
}

TEST(ContentSpans, SlicingIndexingAndIterationAreExact) {
  EXPECT_EQ(track("{{ ('ab' ~ c)[1:3] }}", "hi"), "b[h]");
  EXPECT_EQ(track("{{ ('ab' ~ c)[::-1] }}", "hi"), "[ih]ba");
  EXPECT_EQ(track("{{ ('a' ~ c)[1] }}{{ ('a' ~ c)[0] }}{{ ('a' ~ c)[-1] }}", "xé"), "[x]a[é]");
  EXPECT_EQ(track("{% for ch in 'a' ~ c %}{{ ch }}.{% endfor %}", "hé"), "a.[h].[é].");
  EXPECT_EQ(track("{{ ('a' ~ c)|list|join(',') }}", "hi"), "a,[h],[i]");
  EXPECT_EQ(track("{{ ('ab' ~ c)|first }}{{ ('ab' ~ c)|last }}", "hi"), "a[i]");
}

TEST(ContentSpans, StripSplitAndReplaceAreExact) {
  EXPECT_EQ(track("{{ ('  <' ~ c ~ '>  ')|trim }}", " hi "), "<[ hi ]>");
  EXPECT_EQ(track("{{ (c ~ '  ').strip() }}|{{ ('x' ~ c).lstrip('x') }}|{{ (c ~ '\\n').rstrip('\\n') }}", "  hi "),
            "[hi]|[  hi ]|[  hi ]");
  // Qwen3's reasoning split: content.split('</think>')[-1].lstrip('\n')
  EXPECT_EQ(track("{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].split('<think>')[-1] }}",
                  "<think>r</think>\nanswer"),
            "[answer]|[r]");
  EXPECT_EQ(track("{{ ('a b ' ~ c).split()|join('_') }}", "x  y"), "a_b_[x]_[y]");
  EXPECT_EQ(track("{{ ('a,' ~ c).rsplit(',', 1)|join('|') }}#{{ c.splitlines()|join('/') }}", "x\ny"),
            "a|[x\ny]#[x]/[y]");
  EXPECT_EQ(track("{{ ('<' ~ c ~ '>').replace('i', '!') }}|{{ ('ab' ~ c)|replace('b', c) }}", "hi"), "<[h]!>|a[hihi]");
  EXPECT_EQ(track("{{ ('<' ~ c ~ '>').replace('<', '[[') }}", "hi"), "[[[hi]>");
  EXPECT_EQ(track("{{ ('x' ~ c).partition('|')|join(',') }}", "a|b"), "x[a],|,[b]");
  EXPECT_EQ(track("{{ ('x' ~ c).removeprefix('xa') }}", "ab"), "[b]");
  EXPECT_EQ(track("{{ ('a\\n' ~ c)|indent(2, true) }}", "b\nc"), "  a\n  [b]\n  [c]");
  EXPECT_EQ(track("{{ '-'.join(['<', c, '>']) }}{{ ['<', c]|join(c) }}", "x"), "<-[x]-><[xx]");
}

TEST(ContentSpans, OtherOperationsMarkTheirWholeResult) {
  EXPECT_EQ(track("{{ ('<s>' ~ c)|upper }}"), "[<S>HI]");
  EXPECT_EQ(track("<{{ c|title }}|{{ c.capitalize() }}|{{ c|center(6) }}|{{ c * 2 }}|{{ c|reverse }}>"),
            "<[Hi]|[Hi]|[  hi  ]|[hihi]|[ih]>");
  EXPECT_EQ(track("{{ messages|tojson }}"), "[[{\"role\": \"user\", \"content\": \"hi\"}]]");
  EXPECT_EQ(track("{{ messages[0] }}"), "[{'role': 'user', 'content': 'hi'}]");
  EXPECT_EQ(track("{{ ('<' ~ c)|e }}"), "[&lt;hi]");
  EXPECT_EQ(track("{{ '<x>'|upper }}{{ 'ab'|replace('a', 'b') }}{{ ['a']|tojson }}"), "<X>bb[\"a\"]");
  EXPECT_EQ(track("{{ {'k': c}|tojson }}|{{ [1, 2]|tojson }}"), "[{\"k\": \"hi\"}]|[1, 2]");
  EXPECT_EQ(track("{{ c|length }}{{ c == 'hi' }}{{ c|wordcount }}"), "2True1");  // numbers and bools
  // A dict from the conversation spread into keywords: its key names are content too.
  EXPECT_EQ(track("{% macro m() %}{% for k in kwargs %}{{ k }}{% endfor %}{% endmacro %}{{ m(**messages[0]) }}"),
            "[rolecontent]");
  EXPECT_EQ(track("{{ namespace(**messages[0]) }}"), "[<Namespace {'role': 'user', 'content': 'hi'}>]");
}

TEST(ContentSpans, OnlyTheConversationIsContent) {
  const ChatTemplate t = ChatTemplate::parse(
      "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ flag }}|{{ tools[0].name }}|"
      "{{ documents[0].text }}|{{ add_generation_prompt }}",
      "t");
  ChatOptions opt;
  opt.kwargs = {{"bos_token", "<s>"}, {"flag", "<f>"}};
  opt.tools = ChatJson::parse(R"([{"name": "<t>"}])");
  opt.documents = ChatJson::parse(R"([{"text": "<d>"}])");
  EXPECT_EQ(marked(t.apply_tracked(ChatJson::parse(R"([{"role": "user", "content": "<u>"}])"), opt)),
            "<s>[<u>]<f>|[<t>]|[<d>]|True");
  // Non-string content is content when printed.
  EXPECT_EQ(track("{{ c }}", 42), "42");
  EXPECT_EQ(track("{{ c }}", ChatJson::parse(R"([{"type": "text", "text": "<x>"}])")),
            "[[{'type': 'text', 'text': '<x>'}]]");
  EXPECT_EQ(track("{% for p in c %}{{ p.text }}{% endfor %}", ChatJson::parse(R"([{"text": "<x>"}])")), "[<x>]");
}

}  // namespace
