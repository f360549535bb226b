// `moerun template` on hostile chat templates and big conversations (issue 13): a long left-deep chain
// (`{{ 1+1+...+1 }}`, `{{ x.a.a... }}`, `{{ 'a'|upper|upper... }}`, thousands of elifs) used to kill
// the process with SIGSEGV while freeing its tree, and a template allocating in a loop grew to
// gigabytes; each now fails with one error line and exit code 1, quickly. A multi-megabyte
// conversation still renders. No model weights are needed: a directory with a chat_template.jinja.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  bool signaled = false;
  std::string out, err;
  double seconds = 0;
};

// `moerun template -m DIR --messages FILE` with `source` as DIR/chat_template.jinja.
CliRun run_template(const std::string& name, const std::string& source, const nlohmann::json& messages) {
  const fs::path dir = testing::fresh_dir("template_input_" + name);
  testing::write_file(dir / "chat_template.jinja", source);
  testing::write_file(dir / "messages.json", messages.dump());
  const std::string cmd = std::string("'") + MOERUN_CLI + "' template -m '" + dir.string() + "' --messages '" +
                          (dir / "messages.json").string() + "' >'" + (dir / "stdout").string() + "' 2>'" +
                          (dir / "stderr").string() + "'";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.signaled = !WIFEXITED(status) || (WEXITSTATUS(status) >= 128);  // the shell reports a signal as 128+n
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::read_file(dir / "stdout");
  r.err = testing::read_file(dir / "stderr");
  return r;
}

const nlohmann::json kHello = nlohmann::json::parse(R"([{"role": "user", "content": "hello"}])");

void expect_one_error_line(const CliRun& r, const std::string& part, const std::string& what) {
  EXPECT_FALSE(r.signaled) << what << ": killed by a signal (exit " << r.code << ")";
  EXPECT_EQ(r.code, 1) << what << ": " << r.err;
  EXPECT_EQ(r.out, "") << what;
  EXPECT_EQ(r.err.rfind("moerun: ", 0), 0u) << what << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
  EXPECT_NE(r.err.find("chat_template.jinja:1"), std::string::npos) << what << ": " << r.err;
  EXPECT_NE(r.err.find(part), std::string::npos) << what << ": " << r.err;
  EXPECT_LT(r.seconds, 30.0) << what << " (well under a second in a Release build)";
}

std::string repeat(const std::string& head, const std::string& link, int n, const std::string& tail) {
  std::string s = head;
  for (int i = 0; i < n; ++i) s += link;
  return s + tail;
}

TEST(TemplateInputCli, LongChainsFailWithAnErrorNotACrash) {
  expect_one_error_line(run_template("plus", repeat("{{ 1", "+1", 400000, " }}"), kHello), "more than 100000", "1+1+...");
  expect_one_error_line(run_template("attr", repeat("{{ x", ".a", 400000, " }}"), kHello), "more than 100000", "x.a.a...");
  expect_one_error_line(run_template("filter", repeat("{{ 'a'", "|upper", 400000, " }}"), kHello), "more than 100000",
                        "'a'|upper|upper...");
  expect_one_error_line(run_template("elif", repeat("{% if false %}", "{% elif false %}", 100000, "{% endif %}"), kHello),
                        "more than 100000", "elif chain");
  expect_one_error_line(run_template("deep", repeat("{{ 1", "+1", 1000, " }}"), kHello), "nested deeper than 256",
                        "1+1+... (1000)");
}

TEST(TemplateInputCli, RunawayAllocationStops) {
  expect_one_error_line(
      run_template("loop_alloc", "{% for i in range(100) %}{% set s = 'x' * 200000000 %}{% endfor %}", kHello),
      "allocated more than 512 MiB", "a 200 MB string per iteration");
  expect_one_error_line(run_template("ns_alloc",
                                     "{% set ns = namespace(l=[]) %}{% for m in range(100) %}"
                                     "{% set ns.l = ns.l + ['x' * 200000000] %}{% endfor %}{{ ns.l|length }}",
                                     kHello),
                        "allocated more than 512 MiB", "accumulating in a namespace");
}

TEST(TemplateInputCli, MultiMegabyteConversationRenders) {
  std::string para;
  while (para.size() < 200000) para += "Lorem ipsum <|im_end|> dolor sit amet " + std::to_string(para.size()) + ". ";
  nlohmann::json messages = nlohmann::json::array();
  for (int i = 0; i < 30; ++i) messages.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", para}});
  const CliRun r = run_template("big",
                                "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content | trim + "
                                "'<|im_end|>\\n' }}{% endfor %}<|im_start|>assistant\\n",
                                messages);
  EXPECT_FALSE(r.signaled);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_GT(r.out.size(), 30 * para.size());
  EXPECT_EQ(r.err, "");
}

}  // namespace
}  // namespace moerun
