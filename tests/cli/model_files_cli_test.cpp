// What the CLI does with model directories whose files do not agree with each other (issue 13):
// a checkpoint holding tensors config.json does not use (more layers than num_hidden_layers) is an
// error for every command that builds an engine (run, chat, bench, logits, perplexity) unless
// --ignore-unexpected-tensors says to leave them out; `info` only warns. And `info` shows the
// activation config.json asks for.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  std::string out, err;
};

std::string quoted(const fs::path& p) {
  std::string q = p.string();  // built in place: GCC 12 warns falsely (-Wrestrict) on "'" + s + "'"
  q.insert(q.begin(), '\'');
  q.push_back('\'');
  return q;
}

CliRun run_cli(const std::string& args, const std::string& input = "") {
  static const auto dir = testing::fresh_dir("model_files_cli");
  testing::write_file(dir / "stdin", input);
  const std::string cmd = std::string("'") + MOERUN_CLI + "' " + args + " <" + quoted(dir / "stdin") + " >" +
                          quoted(dir / "stdout") + " 2>" + quoted(dir / "stderr");
  const int status = std::system(cmd.c_str());
  CliRun r;
  EXPECT_TRUE(WIFEXITED(status)) << "moerun " << args << " ended by a signal";
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::read_file(dir / "stdout");
  r.err = testing::read_file(dir / "stderr");
  return r;
}

fs::path golden(const std::string& name) { return fs::path(MOERUN_TEST_DATA) / "golden" / name; }

// A tokenizer for the golden models' 512 ids: id i is the character i for printable ASCII, "<i>"
// otherwise; no merges, so "hi" is [104, 105].
std::string tiny_tokenizer_json() {
  testing::Json vocab = testing::Json::object();
  for (int i = 0; i < 512; ++i)
    vocab[i >= 32 && i < 127 ? std::string(1, static_cast<char>(i)) : "<" + std::to_string(i) + ">"] = i;
  return testing::Json{{"version", "1.0"}, {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", testing::Json::array()}}}}
      .dump();
}

// The golden Llama checkpoint (2 layers) with config.json saying 1: layer 1's 13 tensors (norms,
// q/k/v/o with biases, gate/up/down) are unexpected.
class ExtraLayerCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::copy_file(golden("llama") / "model.safetensors", dir() / "model.safetensors");
    auto config = testing::Json::parse(testing::read_file(golden("llama") / "config.json"));
    config["num_hidden_layers"] = 1;
    testing::write_file(dir() / "config.json", config.dump(2));
    testing::write_file(dir() / "tokenizer.json", tiny_tokenizer_json());
    testing::write_file(dir() / "text.txt", std::string(200, 'a') + "bcdefghijklmnopqrstuvwxyz");
  }
  static fs::path dir() {
    static const auto d = testing::fresh_dir("extra_layer_cli");
    return d;
  }
  static std::string m() { return "-m " + quoted(dir()) + " "; }

  // Refused: exit 1, one line on stderr naming the directory, the count and the flag.
  static void expect_refused(const CliRun& r, const std::string& what) {
    EXPECT_EQ(r.code, 1) << what << ": " << r.err;
    EXPECT_EQ(r.err.rfind("moerun: ", 0), 0u) << what << ": " << r.err;
    for (const std::string& needle : {dir().string() + ": 13 unexpected tensors", std::string("model.layers.1.input_layernorm.weight"),
                                      std::string("num_hidden_layers 1"), std::string("--ignore-unexpected-tensors")})
      EXPECT_NE(r.err.find(needle), std::string::npos) << what << " lacks '" << needle << "': " << r.err;
  }
};

TEST_F(ExtraLayerCli, RunRefusesThenRunsWithTheFlag) {
  expect_refused(run_cli("run " + m() + "-q --raw --temp 0 -n 3 -p hi"), "run");
  const CliRun ok = run_cli("run " + m() + "-q --raw --temp 0 -n 3 -p hi --ignore-unexpected-tensors");
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_FALSE(ok.out.empty());
}

TEST_F(ExtraLayerCli, LogitsRefusesThenRunsWithTheFlag) {
  expect_refused(run_cli("logits " + m() + "--ids 1,2,3"), "logits");
  const CliRun ok = run_cli("logits " + m() + "--ids 1,2,3 --ignore-unexpected-tensors --json");
  ASSERT_EQ(ok.code, 0) << ok.err;
  const auto j = testing::Json::parse(ok.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0].size(), 512u);
}

TEST_F(ExtraLayerCli, ChatBenchAndPerplexityRefuseToo) {
  // Each command that builds an engine takes its options through the shared EngineFlags.
  expect_refused(run_cli("chat " + m(), "hi\n"), "chat");
  expect_refused(run_cli("bench " + m() + "-p 4 -n 2 -r 1"), "bench");
  expect_refused(run_cli("perplexity " + m() + "-c 32 -f " + quoted(dir() / "text.txt")), "perplexity");
  const CliRun bench = run_cli("bench " + m() + "-p 4 -n 2 -r 1 --ignore-unexpected-tensors -o json");
  EXPECT_EQ(bench.code, 0) << bench.err;
  const CliRun ppl = run_cli("perplexity " + m() + "-c 32 --json --ignore-unexpected-tensors -f " + quoted(dir() / "text.txt"));
  EXPECT_EQ(ppl.code, 0) << ppl.err;
  EXPECT_NE(ppl.out.find("perplexity"), std::string::npos) << ppl.out;
}

TEST_F(ExtraLayerCli, InfoStillDescribesItWithAWarning) {
  const CliRun r = run_cli("info " + quoted(dir()));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("warning       ignoring unexpected tensor 'model.layers.1.self_attn.q_proj.weight'"), std::string::npos)
      << r.out;
}

TEST(ActivationCli, InfoShowsHiddenAct) {
  const CliRun tanh = run_cli("info " + quoted(golden("qwen2_moe_gelu_tanh")));
  EXPECT_EQ(tanh.code, 0) << tanh.err;
  EXPECT_NE(tanh.out.find("activation    gelu_tanh (GeGLU, tanh approximation)"), std::string::npos) << tanh.out;
  const CliRun silu = run_cli("info --json " + quoted(golden("llama")));
  ASSERT_EQ(silu.code, 0) << silu.err;
  EXPECT_EQ(testing::Json::parse(silu.out).at("hidden_act"), "silu");
  const CliRun gelu = run_cli("info --json " + quoted(golden("olmoe_gelu")));
  ASSERT_EQ(gelu.code, 0) << gelu.err;
  EXPECT_EQ(testing::Json::parse(gelu.out).at("hidden_act"), "gelu");
}

TEST(ActivationCli, UnsupportedHiddenActIsOneLineNamingIt) {
  const auto dir = testing::fresh_dir("relu_cli");
  fs::copy_file(golden("llama") / "model.safetensors", dir / "model.safetensors");
  auto config = testing::Json::parse(testing::read_file(golden("llama") / "config.json"));
  config["hidden_act"] = "relu";
  testing::write_file(dir / "config.json", config.dump(2));
  for (const std::string& cmd : {"info " + quoted(dir), "logits -m " + quoted(dir) + " --ids 1"}) {
    const CliRun r = run_cli(cmd);
    EXPECT_EQ(r.code, 1) << cmd;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line: " << r.err;
    for (const std::string& needle : {(dir / "config.json").string(), std::string("field 'hidden_act'"),
                                      std::string("unsupported activation 'relu'"), std::string("supported: silu, swish, gelu")})
      EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << " lacks '" << needle << "': " << r.err;
  }
}

}  // namespace
}  // namespace moerun
