// The engine under absurd sizes and broken models (issue 13): contexts are bounded and the memory
// plan refuses what cannot be allocated; long inputs run in micro-batches with the same results;
// non-finite logits are errors that name the first broken layer; sampling defaults follow
// transformers (greedy without generation_config.json) and tiny temperatures are greedy.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/generate.h"
#include "support/expect.h"
#include "support/golden.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using testing::golden_dir;
using testing::max_abs_diff;

using testing::error_of;

TEST(Hardening, ContextsAreBoundedByTheModelUnlessOverridden) {
  const Engine engine = Engine::load(golden_dir("llama"));  // max_position_embeddings 512
  EXPECT_NE(error_of([&] { Session s(engine, 513); }).find("max_position_embeddings"), std::string::npos);
  EXPECT_NE(error_of([&] { Engine::load(golden_dir("llama"), {.context = int64_t{1} << 56}); }).find("context"), std::string::npos);
  const Engine free = Engine::load(golden_dir("llama"), {.context_override = true});
  Session ok(free, 1000);
  EXPECT_EQ(ok.context(), 1000);
  // Past the kernels' 32-bit positions: refused even when overridden.
  EXPECT_NE(error_of([&] { Session s(free, (int64_t{1} << 31) + 1); }).find("largest supported"), std::string::npos);
  EXPECT_NE(error_of([&] { Session s(free, int64_t{1} << 62); }).find("largest supported"), std::string::npos);
}

// Sliding-window attention is not implemented: within the window it equals full attention, past it
// the model would attend differently, so a longer context is refused instead of silently wrong.
TEST(Hardening, ContextsStayWithinASlidingWindow) {
  const fs::path dir = testing::fresh_dir("sliding_window_mixtral");
  for (const auto& e : fs::directory_iterator(golden_dir("mixtral"))) fs::copy_file(e.path(), dir / e.path().filename());
  nlohmann::json config = nlohmann::json::parse(testing::read_file(dir / "config.json"));
  config["sliding_window"] = 64;
  testing::write_file(dir / "config.json", config.dump());
  const Engine engine = Engine::load(dir);
  EXPECT_EQ(engine.default_context(), 64);
  Session ok(engine, 64);
  const std::string e = error_of([&] { Session s(engine, 65); });
  EXPECT_NE(e.find("sliding_window"), std::string::npos) << e;
  // Within the window the logits are those of full attention (the golden's).
  Session full(Engine::load(golden_dir("mixtral")), 64);
  const std::vector<int32_t> ids = {1, 2, 3, 4};
  EXPECT_EQ(max_abs_diff(ok.forward(ids), full.forward(ids)), 0.0f);
}

TEST(Hardening, TheMemoryPlanRefusesWhatTheMachineCannotHold) {
  const Engine engine = Engine::load(golden_dir("deepseek_v2_lite"), {.context_override = true});
  // 2^31 positions of every layer's cache: terabytes. Refused before anything is allocated.
  const std::string e = error_of([&] { Session s(engine, (int64_t{1} << 31) - 1); });
  EXPECT_NE(e.find("GiB"), std::string::npos) << e;
  EXPECT_NE(e.find("smaller -c"), std::string::npos) << e;
}

TEST(Hardening, LongInputsRunInMicroBatchesWithTheSameLogits) {
  const Engine engine = Engine::load(golden_dir("qwen3_moe"), {.context_override = true});
  std::vector<int32_t> ids(1100);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 37 + 11) % 200);
  Session whole(engine, 1200), pieces(engine, 1200);
  const std::vector<float> all = whole.forward(ids, /*all_positions=*/true);  // 512 + 512 + 76 inside
  const size_t V = static_cast<size_t>(engine.config().vocab_size);
  ASSERT_EQ(all.size(), ids.size() * V);
  std::vector<float> stitched;
  for (size_t b = 0; b < ids.size(); b += 100) {
    const auto part = pieces.forward(std::span<const int32_t>(ids).subspan(b, std::min<size_t>(100, ids.size() - b)), true);
    stitched.insert(stitched.end(), part.begin(), part.end());
  }
  EXPECT_EQ(whole.position(), 1100);
  EXPECT_LE(max_abs_diff(all, stitched), 1e-4f);
  // The last row alone is the last row of all of them.
  Session last(engine, 1200);
  const std::vector<float> tail = last.forward(ids);
  EXPECT_LE(max_abs_diff(tail, std::vector<float>(all.end() - static_cast<std::ptrdiff_t>(V), all.end())), 1e-4f);
}

// A copy of a golden model with one weight of `tensor` set to `value`.
fs::path poisoned_copy(const std::string& golden, const std::string& tensor, float value) {
  const fs::path dir = testing::fresh_dir("poisoned_" + golden);
  for (const auto& e : fs::directory_iterator(golden_dir(golden)))
    if (e.path().filename() != "golden.safetensors") fs::copy_file(e.path(), dir / e.path().filename());
  std::string bytes = testing::read_file(dir / "model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, header_len));
  const auto& t = header.at(tensor);
  EXPECT_EQ(t.at("dtype"), "F32");
  const size_t at = 8 + header_len + t.at("data_offsets")[0].get<size_t>() + 4 * 5;
  std::memcpy(bytes.data() + at, &value, 4);
  testing::write_file(dir / "model.safetensors", bytes);
  return dir;
}

TEST(Hardening, NonFiniteLogitsNameTheFirstBrokenLayer) {
  const std::vector<int32_t> ids = {3, 5, 7, 9};
  const Engine nan_mlp = Engine::load(poisoned_copy("llama", "model.layers.1.mlp.down_proj.weight", std::nanf("")));
  Session a(nan_mlp);
  const std::string e = error_of([&] { a.forward(ids); });
  EXPECT_NE(e.find("layer 1's MLP"), std::string::npos) << e;
  EXPECT_NE(e.find("NaN"), std::string::npos) << e;
  EXPECT_EQ(a.position(), 0);  // nothing was appended

  const Engine inf_attn =
      Engine::load(poisoned_copy("llama", "model.layers.0.self_attn.o_proj.weight", std::numeric_limits<float>::infinity()));
  Session b(inf_attn);
  const std::string f = error_of([&] { b.forward(ids); });
  EXPECT_NE(f.find("layer 0's attention"), std::string::npos) << f;
}

TEST(Hardening, SamplingDefaultsFollowTransformers) {
  const fs::path dir = testing::fresh_dir("sampling_defaults");
  EXPECT_TRUE(sampling_defaults(dir).greedy());  // no generation_config.json: greedy, as transformers
  testing::write_file(dir / "generation_config.json", R"({"do_sample": true, "temperature": 0.7, "top_k": 20})");
  EXPECT_FLOAT_EQ(sampling_defaults(dir).temperature, 0.7f);
  testing::write_file(dir / "generation_config.json", R"({"do_sample": true, "temperature": -0.5})");
  std::string e = error_of([&] { sampling_defaults(dir); });
  EXPECT_NE(e.find("generation_config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("temperature"), std::string::npos) << e;
  testing::write_file(dir / "generation_config.json", R"({"top_k": 99999999999})");
  EXPECT_NE(error_of([&] { sampling_defaults(dir); }).find("top_k"), std::string::npos);
  fs::remove(dir / "generation_config.json");
  fs::create_directory(dir / "generation_config.json");
  e = error_of([&] { sampling_defaults(dir); });
  EXPECT_NE(e.find("a directory, not a regular file"), std::string::npos) << e;
}

TEST(Hardening, GreedyWithARepetitionPenaltyAppliesIt) {
  const fs::path tok_dir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
  if (!fs::exists(tok_dir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed";
  const Tokenizer tok = Tokenizer::load(tok_dir);  // any tokenizer that knows ids below 256
  const Engine engine = Engine::load(golden_dir("llama"));
  // A prompt whose greedy next token is already in it (extend it by its greedy token until one
  // repeats), so a repetition penalty bears on the argmax, as transformers applies it before.
  std::vector<int32_t> prompt = {3, 5, 7, 9, 11};
  std::vector<float> logits;
  for (int i = 0; i < 200; ++i) {
    logits = Session(engine).forward(prompt);
    const int32_t best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (std::find(prompt.begin(), prompt.end(), best) != prompt.end()) break;
    prompt.push_back(best);
  }
  const int32_t argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  ASSERT_NE(std::find(prompt.begin(), prompt.end(), argmax), prompt.end()) << "no repeating prompt found";
  Sampler penalised({.temperature = 0.0f, .repeat_penalty = 50.0f});
  const int32_t want = penalised.sample(logits, prompt);
  ASSERT_NE(want, argmax) << "the penalty does not move this argmax; pick another prompt";
  GenerateOptions go;
  go.max_tokens = 1;
  Session s(engine);
  const GenerateResult r = generate(s, tok, penalised, prompt, go, [](std::string_view) { return true; });
  ASSERT_EQ(r.tokens.size(), 1u);
  EXPECT_EQ(r.tokens[0], want);  // before: the plain argmax, the penalty ignored
}

TEST(Hardening, GenerationStopsWhenInterrupted) {
  const fs::path tok_dir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
  if (!fs::exists(tok_dir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed";
  const Tokenizer tok = Tokenizer::load(tok_dir);
  const Engine engine = Engine::load(golden_dir("llama"));
  Session s(engine);
  Sampler greedy({.temperature = 0.0f});
  GenerateOptions go;
  go.max_tokens = 100;
  int polls = 0;
  go.interrupted = [&] { return ++polls > 4; };  // the prefill poll, then three tokens
  const GenerateResult r = generate(s, tok, greedy, std::vector<int32_t>{3, 5, 7}, go, [](std::string_view) { return true; });
  EXPECT_EQ(r.finish_reason, "interrupted");
  EXPECT_EQ(r.generated_tokens, 3);
}

}  // namespace
}  // namespace moerun
