// run, chat, tokenize and template as users and scripts drive them, on the default model
// (models/default, installed by scripts/setup.sh; the tests skip without it). Chat is driven
// through a pipe and through a pseudo-terminal (line editing, Ctrl+C, Ctrl+D).

#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>

#include "support/cli.h"
#include "support/pty.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

using testing::CliRun;
using testing::default_model;

CliRun run_cli(const std::string& args, const std::string& input = "") {
  static const auto dir = testing::fresh_dir("generate_cli");
  testing::write_file(dir / "stdin", input);
  const std::string cmd = std::string("MOERUN_MODEL='") + default_model().string() + "' '" + MOERUN_CLI + "' " + args +
                          " <'" + (dir / "stdin").string() + "' >'" + (dir / "stdout").string() + "' 2>'" +
                          (dir / "stderr").string() + "'";
  const int status = std::system(cmd.c_str());
  CliRun r;
  EXPECT_TRUE(WIFEXITED(status)) << args;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::read_file(dir / "stdout");
  r.err = testing::read_file(dir / "stderr");
  return r;
}

TEST(RunCli, GreedyAnswerIsTheGoldenContinuation) {
  REQUIRE_DEFAULT_MODEL();
  // transformers' greedy continuation of this conversation (tests/data/default_model) up to EOS.
  const CliRun r = run_cli("run --temp 0 -q -p 'What is the capital of France?'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "The capital of France is Paris.\n");
  EXPECT_EQ(r.err, "");  // -q: nothing on stderr
}

TEST(RunCli, StdinPromptTimingLineAndJson) {
  REQUIRE_DEFAULT_MODEL();
  const CliRun piped = run_cli("run --temp 0", "What is the capital of France?\n");
  EXPECT_EQ(piped.code, 0) << piped.err;
  EXPECT_NE(piped.out.find("Paris"), std::string::npos) << piped.out;
  EXPECT_NE(piped.err.find("# prompt "), std::string::npos) << piped.err;  // stats go to stderr

  const CliRun j = run_cli("run --temp 0 -q --json -p 'What is the capital of France?'");
  ASSERT_EQ(j.code, 0) << j.err;
  const auto obj = testing::Json::parse(j.out);
  EXPECT_EQ(obj["text"], "The capital of France is Paris.");
  EXPECT_EQ(obj["finish_reason"], "eos");
  EXPECT_EQ(obj["prompt_tokens"], 37);
  EXPECT_EQ(obj["generated_tokens"], 8);  // seven text tokens and <|im_end|>
  EXPECT_GT(obj["gen_tps"].get<double>(), 0.0);
}

// --spec ngram (prompt lookup): the same text, and --json counts the drafted and accepted tokens.
TEST(RunCli, SpeculationKeepsTheTextAndCountsDrafts) {
  REQUIRE_DEFAULT_MODEL();
  const std::string prompt = "-p 'Repeat exactly: one two three four five six seven eight nine ten. one two three four five six'";
  const CliRun plain = run_cli("run --temp 0 -q --json -n 40 " + prompt);
  const CliRun spec = run_cli("run --temp 0 -q --json -n 40 --spec ngram --spec-max 4 " + prompt);
  ASSERT_EQ(plain.code, 0) << plain.err;
  ASSERT_EQ(spec.code, 0) << spec.err;
  const auto a = testing::Json::parse(plain.out), b = testing::Json::parse(spec.out);
  EXPECT_EQ(b["text"], a["text"]);
  EXPECT_EQ(a["drafted_tokens"], 0);
  EXPECT_GT(b["drafted_tokens"].get<int64_t>(), 0);
  EXPECT_LE(b["accepted_tokens"].get<int64_t>(), b["drafted_tokens"].get<int64_t>());
  EXPECT_EQ(run_cli("run -q --spec ngram --spec-max 16 -p hi").code, 2);  // past the exact range
}

// --spec draft with the default model as its own draft: greedy text as plain decoding gives it,
// every draft accepted (the draft picks what the target then picks). --draft-model alone means
// --spec draft.
TEST(RunCli, DraftModelSpeculationKeepsTheText) {
  REQUIRE_DEFAULT_MODEL();
  const std::string prompt = "-p 'Write a short poem about the sea.'";
  const std::string self = "'" + default_model().string() + "'";
  const CliRun plain = run_cli("run --temp 0 -q --json -n 24 " + prompt);
  const CliRun spec = run_cli("run --temp 0 -q --json -n 24 --spec draft --spec-max 4 --draft-model " + self + " " + prompt);
  const CliRun implied = run_cli("run --temp 0 -q --json -n 24 --draft-model " + self + " " + prompt);
  ASSERT_EQ(plain.code, 0) << plain.err;
  ASSERT_EQ(spec.code, 0) << spec.err;
  ASSERT_EQ(implied.code, 0) << implied.err;
  const auto a = testing::Json::parse(plain.out), b = testing::Json::parse(spec.out), c = testing::Json::parse(implied.out);
  EXPECT_EQ(b["text"], a["text"]);
  EXPECT_EQ(b["generated_tokens"], a["generated_tokens"]);
  EXPECT_GT(b["drafted_tokens"].get<int64_t>(), 0);
  EXPECT_EQ(b["accepted_tokens"], b["drafted_tokens"]);
  EXPECT_EQ(c["text"], a["text"]);
  EXPECT_GT(c["drafted_tokens"].get<int64_t>(), 0);
}

// What cannot speculate says so: --spec draft without a draft model (usage, 2), a draft model whose
// tokenizer gives an id another token (1), --spec mtp on a model without an MTP layer (1), a draft
// model with another --spec (2).
TEST(RunCli, SpeculationErrorsNameTheProblem) {
  REQUIRE_DEFAULT_MODEL();
  const CliRun no_draft = run_cli("run -q --spec draft -p hi");
  EXPECT_EQ(no_draft.code, 2);
  EXPECT_NE(no_draft.err.find("--draft-model"), std::string::npos) << no_draft.err;
  EXPECT_EQ(run_cli("run -q --spec ngram --draft-model '" + default_model().string() + "' -p hi").code, 2);

  // A draft directory whose tokenizer.json swaps the tokens of ids 1000 and 1001 (the rest is the model's).
  const fs::path other = testing::fresh_dir("draft_other_tokenizer");
  for (const char* name : {"config.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"})
    fs::create_symlink(default_model() / name, other / name);
  auto tok = nlohmann::json::parse(testing::read_file(default_model() / "tokenizer.json"));
  auto& vocab = tok["model"]["vocab"];
  for (auto& entry : vocab.items())
    if (entry.value() == 1000) entry.value() = -1;
  for (auto& entry : vocab.items())
    if (entry.value() == 1001) entry.value() = 1000;
  for (auto& entry : vocab.items())
    if (entry.value() == -1) entry.value() = 1001;
  testing::write_file(other / "tokenizer.json", tok.dump());
  const CliRun differs = run_cli("run -q --draft-model '" + other.string() + "' -p hi");
  EXPECT_EQ(differs.code, 1);
  EXPECT_NE(differs.err.find("tokenizer"), std::string::npos) << differs.err;
  EXPECT_NE(differs.err.find(other.string()), std::string::npos) << differs.err;

  const CliRun mtp = run_cli("run -q --spec mtp -p hi");
  EXPECT_EQ(mtp.code, 1);
  EXPECT_NE(mtp.err.find("MTP"), std::string::npos) << mtp.err;
  EXPECT_NE(mtp.err.find("num_nextn_predict_layers"), std::string::npos) << mtp.err;
}

// bench --spec: the speculating row and the plain row on the same prompt, with the counts.
TEST(BenchCli, SpeculativeTestRows) {
  REQUIRE_DEFAULT_MODEL();
  const fs::path dir = testing::fresh_dir("bench_spec");
  testing::write_file(dir / "prompt.txt",
                      "Repeat this list exactly, twice: one two three four five six seven eight nine ten. "
                      "one two three four five six seven eight nine ten.");
  const CliRun r = run_cli("bench --spec ngram --spec-max 4 --spec-prompt '" + (dir / "prompt.txt").string() + "' -n 16 -r 1 -p 0 -o json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u) << r.out;
  EXPECT_EQ(j[0]["test"], "tg16 spec ngram");
  EXPECT_EQ(j[0]["spec"], "ngram");
  EXPECT_EQ(j[1]["test"], "tg16 prompt");
  EXPECT_EQ(j[1]["spec"], "none");
  // The answer ends at the model's EOS (both rows alike: greedy), at most -n.
  EXPECT_EQ(j[0]["tokens"], j[1]["tokens"]);
  for (const auto& row : j) {
    EXPECT_GT(row["tokens"].get<int>(), 0);
    EXPECT_LE(row["tokens"].get<int>(), 16);
    EXPECT_GT(row["tps_mean"].get<double>(), 0.0);
    EXPECT_LE(row["accepted_tokens"].get<int64_t>(), row["drafted_tokens"].get<int64_t>());
    for (const char* key : {"acceptance_rate", "accepted_per_step"}) EXPECT_TRUE(row.contains(key)) << key;
  }
  EXPECT_GT(j[0]["drafted_tokens"].get<int64_t>(), 0);
  EXPECT_EQ(j[1]["drafted_tokens"], 0);
  // --ignore-eos: exactly -n tokens, past the answer.
  const CliRun all = run_cli("bench --spec ngram --ignore-eos --spec-prompt '" + (dir / "prompt.txt").string() + "' -n 24 -r 1 -p 0 -o json");
  ASSERT_EQ(all.code, 0) << all.err;
  for (const auto& row : nlohmann::json::parse(all.out)) EXPECT_EQ(row["tokens"], 24);

  const CliRun no_prompt = run_cli("bench --spec ngram -n 16 -r 1 -p 0");
  EXPECT_EQ(no_prompt.code, 2);
  EXPECT_NE(no_prompt.err.find("--spec-prompt"), std::string::npos) << no_prompt.err;
  EXPECT_EQ(run_cli("bench --spec-prompt '" + (dir / "prompt.txt").string() + "' -n 16 -p 0").code, 2);  // no --spec
}

TEST(RunCli, StopStringsAndTokenLimits) {
  REQUIRE_DEFAULT_MODEL();
  const CliRun stop = run_cli("run --temp 0 -q --json --stop Paris -p 'What is the capital of France?'");
  const auto s = testing::Json::parse(stop.out);
  EXPECT_EQ(s["text"], "The capital of France is ");
  EXPECT_EQ(s["finish_reason"], "stop");
  // A stop string that spans tokens ("is Par") is found too and not printed.
  const CliRun span = run_cli("run --temp 0 -q --stop 'is Par' -p 'What is the capital of France?'");
  EXPECT_EQ(span.out, "The capital of France \n");
  const CliRun limit = run_cli("run --temp 0 -q --json -n 3 -p 'What is the capital of France?'");
  const auto l = testing::Json::parse(limit.out);
  EXPECT_EQ(l["generated_tokens"], 3);
  EXPECT_EQ(l["finish_reason"], "length");
  EXPECT_EQ(l["text"], "The capital of");
}

TEST(RunCli, SameSeedSameTextAndErrorsExitOneOrTwo) {
  REQUIRE_DEFAULT_MODEL();
  const std::string args = "run -q --temp 1.0 --seed 42 -n 24 -p 'Tell me a story about a cat.'";
  const CliRun a = run_cli(args), b = run_cli(args);
  EXPECT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  const CliRun c = run_cli("run -q --temp 1.0 --seed 43 -n 24 -p 'Tell me a story about a cat.'");
  EXPECT_NE(a.out, c.out);

  const CliRun too_long = run_cli("run -q -c 16 -p 'What is the capital of France?'");
  EXPECT_EQ(too_long.code, 1);
  EXPECT_NE(too_long.err.find("the prompt is 37 tokens but the context holds 16"), std::string::npos) << too_long.err;
  EXPECT_EQ(run_cli("run --temp -1 -p x").code, 2);
  EXPECT_EQ(run_cli("run --no-such-flag").code, 2);
  const CliRun missing = run_cli("run -q -m /nonexistent -p x");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("/nonexistent"), std::string::npos);
}

TEST(ChatCli, PipedTurnsResetAndExit) {
  REQUIRE_DEFAULT_MODEL();
  const CliRun r = run_cli("chat --temp 0",
                           "What is the capital of France?\nAnd of Germany?\n/stats\n/reset\n/stats\n/exit\nnot read\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("The capital of France is Paris.\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Berlin"), std::string::npos) << r.out;
  // The second turn reuses the first turn's cache and prefills only the new tokens.
  EXPECT_NE(r.out.find("reused from the cache"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cache: 0 of "), std::string::npos) << "after /reset: " << r.out;
  EXPECT_EQ(r.out.find("not read"), std::string::npos);
}

TEST(ChatCli, SaveLoadAndMultiLineInput) {
  REQUIRE_DEFAULT_MODEL();
  const auto dir = testing::fresh_dir("chat_save");
  const std::string file = (dir / "conv.json").string();
  const CliRun r = run_cli("chat --temp 0 -n 8", "\"\"\"\nWhat is the capital\nof France?\n\"\"\"\n/save " + file + "\n");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto saved = testing::Json::parse(testing::read_file(file));
  ASSERT_EQ(saved["messages"].size(), 2u);
  EXPECT_EQ(saved["messages"][0]["content"], "What is the capital\nof France?");
  EXPECT_EQ(saved["messages"][1]["role"], "assistant");
  const CliRun loaded = run_cli("chat --temp 0 -n 4", "/load " + file + "\n/stats\ncontinued \\\nline\n/save " + file + "\n");
  ASSERT_EQ(loaded.code, 0) << loaded.err;
  const auto again = testing::Json::parse(testing::read_file(file));
  ASSERT_EQ(again["messages"].size(), 4u);
  EXPECT_EQ(again["messages"][2]["content"], "continued \nline");
}

TEST(ChatCli, TerminalSessionWithCtrlCAndCtrlD) {
  REQUIRE_DEFAULT_MODEL();
  testing::Pty pty(MOERUN_CLI, "chat --temp 0 -n 400", {{"MOERUN_MODEL", default_model().string()}});
  ASSERT_TRUE(pty.wait_for("> ")) << pty.output();
  // A long answer, interrupted: Ctrl+C stops it and the prompt comes back.
  size_t mark = pty.output().size();
  pty.send("Count from 1 to 300, one number per line.\r");
  ASSERT_TRUE(pty.wait_for("12", mark)) << pty.output();
  pty.send("\x03");
  ASSERT_TRUE(pty.wait_for("[stopped]", mark)) << pty.output();
  ASSERT_TRUE(pty.wait_for("> ", pty.output().find("[stopped]", mark))) << pty.output();
  // The session goes on after the interruption (the small model repeats itself across turns, so
  // start a fresh conversation for a clean answer).
  mark = pty.output().size();
  pty.send("/reset\r");
  ASSERT_TRUE(pty.wait_for("> ", mark + 1)) << pty.output();
  mark = pty.output().size();
  pty.send("What is the capital of France?\r");
  ASSERT_TRUE(pty.wait_for("Paris", mark)) << pty.output();
  ASSERT_TRUE(pty.wait_for("> ", pty.output().find("Paris", mark))) << pty.output();
  usleep(300000);     // let libedit take the line before the key arrives
  pty.send("\x04");  // Ctrl+D leaves
  EXPECT_EQ(pty.wait_exit(), 0) << pty.output();
}

TEST(TokenizeCli, EncodeDecodeJsonlAndTemplate) {
  REQUIRE_DEFAULT_MODEL();
  const std::string m = "-m '" + default_model().string() + "' ";
  EXPECT_EQ(run_cli("tokenize " + m + "-p 'Hello 123 world'").out, "19556 216 33 34 35 905\n");
  EXPECT_EQ(run_cli("tokenize " + m + "--json", "Hello 123 world").out, "[19556,216,33,34,35,905]\n");
  EXPECT_EQ(run_cli("tokenize " + m + "--decode -p '19556 216 33 34 35 905'").out, "Hello 123 world\n");
  EXPECT_EQ(run_cli("tokenize " + m + "--json -p '<|im_start|>x'").out, "[1,104]\n");
  EXPECT_NE(run_cli("tokenize " + m + "--json --no-special -p '<|im_start|>x'").out, "[1,104]\n");
  EXPECT_EQ(run_cli("tokenize " + m + "--jsonl", "\"a b\"\n\"<|im_start|>x\"\n").out, "[81,278]\n[1,104]\n");
  EXPECT_EQ(run_cli("tokenize " + m + "--jsonl", "not json\n").code, 1);
  const CliRun t = run_cli("template " + m, R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(t.out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  const CliRun t2 = run_cli("template --no-generation-prompt " + m, R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(t2.out.find("<|im_start|>assistant"), std::string::npos) << t2.out;
}

TEST(PerplexityCli, ScoresATextAndQuantizationCostsLittleAtQ8) {
  REQUIRE_DEFAULT_MODEL();
  const std::string text = std::string(MOERUN_SOURCE_DIR) + "/docs/DESIGN.md";
  auto ppl = [&](const std::string& quant) {
    const CliRun r = run_cli("perplexity --json -c 128 --chunks 3 --quant " + quant + " -f '" + text + "'");
    EXPECT_EQ(r.code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j.at("tokens_scored").get<int>(), 3 * 63);  // tokens 64..126 of each chunk predict 65..127
    return j.at("perplexity").get<double>();
  };
  const double base = ppl("none"), q8 = ppl("q8");
  // A chat model on English prose: far better than chance (vocabulary 49152), not implausibly good.
  EXPECT_GT(base, 2.0);
  EXPECT_LT(base, 500.0);
  // int8 blocks of 32 keep the distribution: measured +0.7% on docs/MODELS.md; 5% is the bound.
  EXPECT_LT(std::fabs(q8 / base - 1.0), 0.05) << base << " vs " << q8;
  const CliRun missing = run_cli("perplexity -f /nonexistent/text.txt");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("/nonexistent/text.txt"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace moerun
