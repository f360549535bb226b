// The Engine/Session API around the executor: cache reuse, truncation, and bad input rejected with
// a message before any work (never a crash during forward).

#include <gtest/gtest.h>

#include <cmath>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "support/expect.h"
#include "support/golden.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

using testing::golden_dir;

using testing::max_abs_diff;

using testing::error_of;

const std::vector<int32_t> kPrompt = {11, 22, 33, 44, 55, 66, 77};

TEST(Session, TruncateThenContinueEqualsAFreshSession) {
  const Engine engine = Engine::load(golden_dir("qwen3_moe"), {.kv_type = KvType::f32});  // the same bits either way
  Session fresh(engine);
  const std::vector<float> want = fresh.forward(std::vector<int32_t>{11, 22, 33, 99, 98});

  Session s(engine);
  s.forward(kPrompt);
  EXPECT_EQ(s.position(), 7);
  s.truncate(3);  // keep "11 22 33", as chat does with a common prefix
  EXPECT_EQ(s.position(), 3);
  EXPECT_LE(max_abs_diff(s.forward(std::vector<int32_t>{99, 98}), want), 1e-5f);
  s.reset();
  EXPECT_EQ(s.position(), 0);
  EXPECT_THROW(s.truncate(1), Error);
}

TEST(Session, SessionsOfOneEngineAreIndependent) {
  const Engine engine = Engine::load(golden_dir("deepseek_v2_lite"));
  Session a(engine), b(engine);
  const std::vector<float> first = a.forward(kPrompt);
  b.forward(std::vector<int32_t>{1, 2, 3});
  Session c(engine);
  EXPECT_EQ(max_abs_diff(first, c.forward(kPrompt)), 0.0f);  // same inputs, same arithmetic: bit-identical
}

TEST(Session, BadTokensAndContextOverflowAreErrorsThatChangeNothing) {
  const Engine engine = Engine::load(golden_dir("llama"));
  Session s(engine, /*context=*/8);
  EXPECT_EQ(s.context(), 8);
  s.forward(std::vector<int32_t>{1, 2, 3});
  EXPECT_NE(error_of([&] { s.forward(std::vector<int32_t>{4, 512}); }).find("token id 512 is outside the vocabulary [0, 512)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.forward(std::vector<int32_t>{-1}); }).find("token id -1"), std::string::npos);
  EXPECT_NE(error_of([&] { s.forward(std::vector<int32_t>{1, 2, 3, 4, 5, 6}); }).find("3 cached + 6 new tokens exceed the context of 8"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.forward(std::vector<int32_t>{}); }).find("no tokens"), std::string::npos);
  EXPECT_EQ(s.position(), 3);
  s.forward(std::vector<int32_t>{4, 5, 6, 7, 8});  // exactly fills the context
  EXPECT_EQ(s.position(), 8);
}

TEST(Engine, DefaultContextIsTheModelsCappedAt4096) {
  EXPECT_EQ(Engine::load(golden_dir("llama")).default_context(), 512);  // max_position_embeddings 512
  EXPECT_EQ(Engine::load(golden_dir("llama"), {.context = 50}).default_context(), 50);
}

TEST(Engine, MismatchedCheckpointIsRejectedAtLoadWithTheTensorName) {
  // The config says intermediate_size 80 but the experts are 96 wide: load fails naming every
  // mis-shaped tensor (folded per shard), so forward never runs on mismatched shapes.
  const fs::path dir = testing::fresh_dir("engine_mismatch");
  fs::copy(golden_dir("mixtral"), dir, fs::copy_options::recursive);
  auto config = testing::Json::parse(testing::read_file(dir / "config.json"));
  config["intermediate_size"] = 80;
  testing::write_file(dir / "config.json", config.dump());
  const std::string msg = error_of([&] { Engine::load(dir); });
  for (const char* part : {"6 tensor problems for a mixtral model",
                           "8 tensors 'model.layers.0.block_sparse_moe.experts.{0-7}.w1.weight': expected F32 [80, 64], found F32 [96, 64]",
                           "8 tensors 'model.layers.1.block_sparse_moe.experts.{0-7}.w2.weight': expected F32 [64, 80], found F32 [64, 96]"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " in " << msg;

  // A tensor missing from a shard (and from the index) is named too.
  const fs::path dir2 = testing::fresh_dir("engine_missing");
  fs::copy(golden_dir("llama"), dir2, fs::copy_options::recursive);
  const auto f = testing::read_file(dir2 / "model.safetensors");
  std::vector<testing::TensorSpec> keep;
  {
    const auto st = testing::Json::parse(f.substr(8, static_cast<size_t>(*reinterpret_cast<const uint64_t*>(f.data()))));
    const size_t data_start = 8 + static_cast<size_t>(*reinterpret_cast<const uint64_t*>(f.data()));
    for (const auto& [name, e] : st.items()) {
      if (name == "__metadata__" || name == "model.layers.1.self_attn.k_proj.bias") continue;
      const uint64_t b = e["data_offsets"][0], en = e["data_offsets"][1];
      keep.push_back({name, DType::f32, e["shape"].get<Shape>(), f.substr(data_start + b, en - b)});
    }
  }
  testing::write_file(dir2 / "model.safetensors", testing::safetensors_bytes(keep));
  EXPECT_NE(error_of([&] { Engine::load(dir2); }).find("tensor 'model.layers.1.self_attn.k_proj.bias': missing (expected [32])"),
            std::string::npos);
}

}  // namespace
}  // namespace moerun
