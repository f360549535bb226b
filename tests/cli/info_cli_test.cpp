// `moerun info` as a user runs it: stdout is the answer, errors are one line on stderr, exit codes
// 0 / 1 / 2, never a signal.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "moerun/engine.h"
#include "support/cli.h"
#include "support/writer.h"

namespace moerun {
namespace {

using testing::CliRun;
CliRun run_cli(const std::string& args) { return testing::run_moerun(args); }

// An error is exactly one line on stderr that starts with "moerun: " and nothing on stdout.
void expect_one_line_error(const CliRun& r, const std::string& needle) {
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.rfind("moerun: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

class InfoCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const std::string& name : testing::tiny_config_names())
      testing::write_model_dir(dir() / name, testing::tiny_config(name), {.shards = name == "deepseek_v3" ? 3 : 1});
  }
  static std::filesystem::path dir() {
    static const auto d = testing::fresh_dir("cli_models");
    return d;
  }
  static std::string quoted(const std::filesystem::path& p) {
    std::string q = p.string();  // built in place: GCC 12 warns falsely (-Wrestrict) on "'" + s + "'"
    q.insert(q.begin(), '\'');
    q.push_back('\'');
    return q;
  }
};

TEST_F(InfoCli, DescribesEveryFamily) {
  for (const std::string& name : testing::tiny_config_names()) {
    const testing::Json cfg = testing::tiny_config(name);
    const CliRun r = run_cli("info " + quoted(dir() / name));
    EXPECT_EQ(r.code, 0) << name << ": " << r.err;
    EXPECT_TRUE(r.err.empty()) << name << ": " << r.err;
    EXPECT_NE(r.out.find(cfg["architectures"][0].get<std::string>()), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("parameters"), std::string::npos) << r.out;
  }
}

TEST_F(InfoCli, JsonIsOneObjectOnStdout) {
  const CliRun r = run_cli("info --json " + quoted(dir() / "deepseek_v3"));
  ASSERT_EQ(r.code, 0) << r.err;
  const testing::Json j = testing::Json::parse(r.out);
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["shards"], 3);
  EXPECT_EQ(j["moe"]["routed_experts"], 16);
  EXPECT_FALSE(j.contains("tensors"));

  const CliRun t = run_cli("info --json --tensors " + quoted(dir() / "qwen3_moe"));
  ASSERT_EQ(t.code, 0) << t.err;
  const testing::Json jt = testing::Json::parse(t.out);
  ASSERT_TRUE(jt["tensors"].is_array());
  EXPECT_EQ(jt["tensors"].size(), jt["num_tensors"].get<size_t>());
  for (const auto& x : jt["tensors"]) {
    EXPECT_TRUE(x.contains("name") && x.contains("dtype") && x.contains("shape"));
    EXPECT_EQ(x["shard"], "model.safetensors");
  }
}

TEST_F(InfoCli, TensorsListNameDtypeShapeShard) {
  const CliRun r = run_cli("info --tensors " + quoted(dir() / "mixtral"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("model.layers.1.block_sparse_moe.experts.3.w2.weight  BF16    [64, 96]  model.safetensors"),
            std::string::npos)
      << r.out;
}

TEST_F(InfoCli, LoneSafetensorsFile) {
  const auto file = dir() / "lone.safetensors";
  testing::write_file(file, testing::safetensors_bytes({{"x", DType::f16, {2, 2}, {}}}, {{"format", "pt"}}));
  const CliRun r = run_cli("info " + quoted(file));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("metadata      format = pt"), std::string::npos) << r.out;
}

TEST_F(InfoCli, ErrorsAreOneLineNamingTheFile) {
  expect_one_line_error(run_cli("info /nonexistent/model"), "/nonexistent/model: no such file or directory");

  const auto bad = dir() / "bad.safetensors";
  testing::write_file(bad, testing::raw_safetensors(R"({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 6]}})", "123456"));
  expect_one_line_error(run_cli("info " + quoted(bad)), "bad.safetensors: tensor 'w': BF16 [4] needs 8 bytes");

  const auto broken = dir() / "broken_dir";
  testing::write_model_dir(broken, testing::tiny_config("olmoe"));
  testing::write_file(broken / "config.json", "{\"model_type\": \"olmoe\",\n  \"hidden_size\": }");
  expect_one_line_error(run_cli("info --json " + quoted(broken)), "config.json: invalid JSON at line 2");
}

TEST_F(InfoCli, UsageErrorsExitTwo) {
  EXPECT_EQ(run_cli("").code, 2);
  EXPECT_EQ(run_cli("info").code, 2);
  EXPECT_EQ(run_cli("info --no-such-flag x").code, 2);
  EXPECT_EQ(run_cli("frobnicate").code, 2);
  const CliRun help = run_cli("info --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--tensors"), std::string::npos);
}

}  // namespace
}  // namespace moerun

namespace moerun {
namespace {

std::filesystem::path golden(const std::string& name) { return std::filesystem::path(MOERUN_TEST_DATA) / "golden" / name; }

TEST(LogitsCli, JsonMatchesTheLibraryForEveryPosition) {
  const std::string dir = golden("qwen2_moe").string();
  const CliRun r = run_cli("logits -m '" + dir + "' --ids '3 14 15 92' --all --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const testing::Json j = testing::Json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 4u);
  const Engine engine = Engine::load(dir);
  Session s(engine);
  const std::vector<float> want = s.forward(std::vector<int32_t>{3, 14, 15, 92}, true);
  for (size_t t = 0; t < 4; ++t) {
    ASSERT_EQ(j[t].size(), 512u);
    for (size_t i = 0; i < 512; ++i) ASSERT_EQ(j[t][i].get<float>(), want[t * 512 + i]) << t << "," << i;
  }
}

TEST(LogitsCli, TextIsOneLineOfFloatsForTheLastPosition) {
  const CliRun r = run_cli("logits -m '" + golden("deepseek_v3").string() + "' --ids 1,2,3 --mla naive");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), ' '), 511);
}

TEST(LogitsCli, BadIdsAreUsageErrorsAndBadModelsRuntimeErrors) {
  const std::string m = "logits -m '" + golden("llama").string() + "' ";
  EXPECT_EQ(run_cli(m + "--ids 'one two'").code, 2);
  EXPECT_EQ(run_cli(m + "--ids ''").code, 2);
  EXPECT_EQ(run_cli(m + "--ids '-5'").code, 2);
  EXPECT_EQ(run_cli("logits --ids 1").code, 2);  // no model
  const CliRun oov = run_cli(m + "--ids '1 512'");
  EXPECT_EQ(oov.code, 1);
  EXPECT_NE(oov.err.find("token id 512 is outside the vocabulary"), std::string::npos) << oov.err;
  const CliRun ctx = run_cli(m + "--ids '1 2 3' -c 2");
  EXPECT_EQ(ctx.code, 1);
  EXPECT_NE(ctx.err.find("exceed the context of 2 tokens"), std::string::npos) << ctx.err;
  EXPECT_EQ(run_cli("logits -m /nonexistent --ids 1").code, 1);
}

}  // namespace
}  // namespace moerun

namespace moerun {
namespace {

TEST(TokenizeFilesCli, TokenizerJsonAndSentencePieceFilesDirectly) {
  const std::string data = std::string(MOERUN_TEST_DATA) + "/tokenizers/";
  const CliRun ds = run_cli("tokenize -m '" + data + "deepseek_v3/tokenizer.json' --json -p 'Hello, world'");
  ASSERT_EQ(ds.code, 0) << ds.err;
  EXPECT_EQ(ds.out.front(), '[');
  const CliRun round = run_cli("tokenize -m '" + data + "mistral' --decode --json -p \"$(" + MOERUN_CLI + " tokenize -m '" +
                               data + "mistral' --no-bos -p 'Grüße, 世界')\"");
  EXPECT_EQ(round.out, "\"Grüße, 世界\"\n") << round.err;
  const CliRun spm = run_cli("tokenize -m '" + data + "spm_unigram/spm_unigram.model' -p 'Hello world'");
  EXPECT_EQ(spm.code, 0) << spm.err;
  EXPECT_FALSE(spm.out.empty());
  const CliRun bad = run_cli("tokenize -m '" + data + "mistral' -p \"$(printf '\\377')\"");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("not valid UTF-8"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace moerun

namespace moerun {
namespace {

TEST(BenchCli, ThreadListGivesEveryTestPerThreadCount) {
  // llama-bench's -t 1,2: one engine per thread count, each test once per count, in order.
  const CliRun r = run_cli("bench -m '" + (std::filesystem::path(MOERUN_TEST_DATA) / "golden" / "llama").string() +
                           "' -p 8 -n 4 -r 1 -t 1,2 -o csv");
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> threads_and_test;
  std::istringstream lines(r.out);
  std::string line;
  std::getline(lines, line);  // header
  while (std::getline(lines, line)) {
    const size_t a = line.find("\",CPU,");
    ASSERT_NE(a, std::string::npos) << line;
    // backend, threads, kv_type, test
    const size_t b = line.find(',', a + 6), c = line.find(',', b + 1), d = line.find(',', c + 1);
    EXPECT_EQ(line.substr(b + 1, c - b - 1), "f16") << line;  // the default KV type
    threads_and_test.push_back(line.substr(a + 6, b - a - 6) + " " + line.substr(c + 1, d - c - 1));
  }
  EXPECT_EQ(threads_and_test, (std::vector<std::string>{"1 \"pp8\"", "1 \"tg4\"", "2 \"pp8\"", "2 \"tg4\""})) << r.out;
  EXPECT_EQ(run_cli("bench -t 0").code, 2);
}

}  // namespace
}  // namespace moerun
