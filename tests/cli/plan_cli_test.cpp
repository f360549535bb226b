// The memory plan as users see it: `moerun info --plan` (text and JSON, on a model directory and on
// a bare config.json) and the refusal of run / bench before loading what cannot fit.

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "support/cli.h"
#include "support/writer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using testing::CliRun;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }
fs::path config(const char* name) { return fs::path(MOERUN_TEST_DATA) / "configs" / (std::string(name) + ".json"); }
fs::path golden(const char* name) { return fs::path(MOERUN_TEST_DATA) / "golden" / name; }

CliRun run_cli(const std::string& args) { return testing::run_moerun(args); }

TEST(PlanCli, JsonOfAModelDirectoryAddsUp) {
  for (const char* name : {"llama", "llama3_tied", "qwen2_moe", "deepseek_v3", "deepseek_v3_fp8"}) {
    const CliRun r = run_cli("info --plan --json -c 64 " + q(golden(name)));
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    const testing::Json j = testing::Json::parse(r.out);
    for (const char* key : {"weights_bytes", "kv_bytes", "workspace_bytes", "total_bytes", "available_bytes", "fits"})
      EXPECT_TRUE(j.contains(key)) << name << " lacks " << key;
    EXPECT_EQ(j["context"], 64);
    EXPECT_EQ(j["backend"], "cpu");  // no GPU here, and auto resolves to the CPU
    EXPECT_TRUE(j["fits"].get<bool>()) << r.out;
    EXPECT_EQ(j["weights_bytes"].get<uint64_t>() + j["kv_bytes"].get<uint64_t>() + j["workspace_bytes"].get<uint64_t>(),
              j["total_bytes"].get<uint64_t>());
    EXPECT_EQ(j["weights_mapped_bytes"].get<uint64_t>() + j["weights_owned_bytes"].get<uint64_t>(), j["weights_bytes"].get<uint64_t>());
    uint64_t roles = 0;
    for (const auto& b : j["workspace"]) roles += b["bytes"].get<uint64_t>();
    EXPECT_EQ(roles, j["workspace_bytes"].get<uint64_t>());
    EXPECT_EQ(j["devices"][0]["name"], "host");
  }
}

TEST(PlanCli, QuantShrinksTheWeightsAndContextGrowsTheCache) {
  auto plan = [](const std::string& flags) {
    const CliRun r = run_cli("info --plan --json " + flags + " " + q(golden("qwen3_moe")));
    EXPECT_EQ(r.code, 0) << r.err;
    return testing::Json::parse(r.out.empty() ? "{}" : r.out);
  };
  const testing::Json plain = plan("-c 64"), q4 = plan("-c 64 --quant q4"), longer = plan("-c 128");
  EXPECT_LT(q4["weights_bytes"].get<uint64_t>(), plain["weights_bytes"].get<uint64_t>());
  EXPECT_EQ(q4["quant"], "q4");
  EXPECT_EQ(longer["kv_bytes"].get<uint64_t>(), 2 * plain["kv_bytes"].get<uint64_t>());
}

// No weights needed: DeepSeek-V3's config.json alone answers "would it fit at 32k?".
TEST(PlanCli, BareConfigJson) {
  const CliRun text = run_cli("info --plan -c 32768 " + q(config("deepseek_v3")));
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("KV cache"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("verdict: does not fit"), std::string::npos) << text.out;
  const CliRun json = run_cli("info --plan --json --kv-type f32 -c 32768 " + q(config("deepseek_v3")));
  ASSERT_EQ(json.code, 0) << json.err;
  const testing::Json j = testing::Json::parse(json.out);
  EXPECT_FALSE(j["fits"].get<bool>());
  EXPECT_EQ(j["kv_bytes"].get<uint64_t>(), uint64_t{61} * 32768 * (512 + 64) * 4);
  EXPECT_EQ(j["kv_type"], "f32");
  EXPECT_EQ(j["fp8"], "kept");  // the default: the FP8 projections stay FP8, mapped
  // The CUDA plan places the weights on the device; without a GPU nothing is available there.
  const CliRun cuda = run_cli("info --plan --json --backend cuda " + q(config("smollm2_135m")));
  ASSERT_EQ(cuda.code, 0) << cuda.err;
  const testing::Json jc = testing::Json::parse(cuda.out);
  ASSERT_EQ(jc["devices"].size(), 2u);
  EXPECT_EQ(jc["devices"][1]["name"], "cuda:0");
  EXPECT_GT(jc["weights_device_bytes"].get<uint64_t>(), 0u);
}

// The KV type sets the cache's bytes: 4, 2, 2 and 34/32 bytes per element.
TEST(PlanCli, KvTypeSizesTheCache) {
  const uint64_t elements = uint64_t{61} * 32768 * (512 + 64);
  for (const auto& [type, bytes] : {std::pair{"f32", elements * 4}, std::pair{"f16", elements * 2}, std::pair{"bf16", elements * 2},
                                    std::pair{"q8_0", elements / 32 * 34}}) {
    const CliRun r = run_cli(std::string("info --plan --json -c 32768 --kv-type ") + type + " " + q(config("deepseek_v3")));
    ASSERT_EQ(r.code, 0) << r.err;
    const testing::Json j = testing::Json::parse(r.out);
    EXPECT_EQ(j["kv_type"], type);
    EXPECT_EQ(j["kv_bytes"].get<uint64_t>(), bytes) << type;
  }
  const CliRun text = run_cli("info --plan -c 32768 --kv-type q8_0 " + q(config("qwen3_30b_a3b")));
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("KV q8_0"), std::string::npos) << text.out;
}

// A context whose f32 cache needs twice this machine's memory and whose q8_0 cache (3.8x smaller)
// fits: the plan refuses and names --kv-type q8_0.
TEST(PlanCli, SuggestsTheQ8CacheWhenOnlyItFits) {
  const std::string m = q(config("smollm2_135m"));
  const CliRun small = run_cli("info --plan --json --kv-type f32 -c 1024 " + m);
  ASSERT_EQ(small.code, 0) << small.err;
  const testing::Json s = testing::Json::parse(small.out);
  const uint64_t per_token = s["kv_bytes"].get<uint64_t>() / 1024, room = s["available_bytes"].get<uint64_t>();
  const uint64_t ctx = std::min<uint64_t>(2 * room / per_token, uint64_t{1} << 30);
  const CliRun big = run_cli("info --plan --json --kv-type f32 --ctx-override -c " + std::to_string(ctx) + " " + m);
  ASSERT_EQ(big.code, 0) << big.err;
  const testing::Json b = testing::Json::parse(big.out);
  if (b["weights_bytes"].get<uint64_t>() + per_token * ctx * 34 / 128 > room * 9 / 10) GTEST_SKIP() << "too little memory free here";
  EXPECT_FALSE(b["fits"].get<bool>()) << big.out;
  EXPECT_NE(b["suggestions"].get<std::string>().find("--kv-type q8_0"), std::string::npos) << big.out;
}

// The flagship on a 24 GB machine: DeepSeek-V3's three dense layers and one MoE layer of 256 experts
// (~16 GB of FP8) are planned as FP8; dequantized to bf16 they would need about twice that, and
// bench refuses at once, naming --fp8 keep.
TEST(PlanCli, DeepSeekV3InFp8FitsWhereBf16IsRefused) {
  const std::string cfg = q(config("deepseek_v3"));
  const auto t0 = std::chrono::steady_clock::now();
  const CliRun refused = run_cli("bench --synthetic " + cfg + " --layers 4 --fp8 bf16 -p 0 -n 2 -r 1");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(refused.code, 1) << refused.err;
  EXPECT_LT(secs, 30.0);  // refused before any weight is made
  EXPECT_NE(refused.err.find("does not fit"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("--fp8 keep"), std::string::npos) << refused.err;
  // The plan of the same model kept in FP8 (bench plans synthetic weights as the checkpoint stores them).
  const CliRun plan = run_cli("info --plan --json --layers 4 " + cfg);
  ASSERT_EQ(plan.code, 0) << plan.err;
  const testing::Json j = testing::Json::parse(plan.out);
  EXPECT_EQ(j["fp8"], "kept");
  const auto gib = [](uint64_t b) { return static_cast<double>(b) / double(1ull << 30); };
  EXPECT_GT(gib(j["weights_bytes"].get<uint64_t>()), 14.0);
  EXPECT_LT(gib(j["weights_bytes"].get<uint64_t>()), 17.0);
  EXPECT_EQ(j["weights_owned_bytes"].get<uint64_t>() < (uint64_t{1} << 30), true) << "only norms and scales are copied";
}

#if !defined(MOERUN_SANITIZED)
// And it runs: 16 GB of FP8 weights made in memory, decoded in FP8 (skipped where less memory is free).
TEST(PlanCli, DeepSeekV3FourLayersRunsInFp8) {
  const std::string cfg = q(config("deepseek_v3"));
  const CliRun plan = run_cli("info --plan --json --layers 4 " + cfg);
  ASSERT_EQ(plan.code, 0) << plan.err;
  if (!testing::Json::parse(plan.out)["fits"].get<bool>()) GTEST_SKIP() << "less than ~17 GB free here";
  const CliRun r = run_cli("bench --synthetic " + cfg + " --layers 4 -p 0 -n 2 -r 1 -o json");
  ASSERT_EQ(r.code, 0) << r.err;
  const testing::Json j = testing::Json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_NE(j[0]["model"].get<std::string>().find("f8_e4m3"), std::string::npos) << r.out;
  EXPECT_GT(j[0]["tps_mean"].get<double>(), 0.0);
}
#endif

TEST(PlanCli, BadInputIsOneLine) {
  const CliRun r = run_cli("info --plan " + q(config("no_such_model")));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("moerun: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("no_such_model"), std::string::npos) << r.err;
}

// bench --synthetic of the full DeepSeek-V3 (61 layers, 1.3 TB of bf16 once made) refuses at once with
// the numbers, instead of making random weights until the OOM killer ends it.
TEST(PlanCli, SyntheticBenchThatCannotFitIsRefusedAtOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  const CliRun r = run_cli("bench --synthetic " + q(config("deepseek_v3")) + " -p 16 -n 4 -r 1");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_LT(secs, 30.0);  // not a timing assertion on speed: a run that made the weights would take hours
  EXPECT_NE(r.err.find("does not fit"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("KV cache"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--no-memory-check"), std::string::npos) << r.err;
}

TEST(PlanCli, RunRefusesWhatCannotFitAndNoMemoryCheckSkipsTheCheck) {
  const std::string m = "-m " + q(golden("llama")) + " ";
  const CliRun refused = run_cli("logits " + m + "--ids '1 2 3' -c 2147483647 --ctx-override");
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(refused.err.find("does not fit"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("would fit: -c "), std::string::npos) << refused.err;
  // Skipped, the plan no longer stops it: whatever happens next is not the plan's refusal.
  const CliRun skipped = run_cli("logits " + m + "--ids '1 2 3' -c 2147483647 --ctx-override --no-memory-check");
  EXPECT_EQ(skipped.err.find("does not fit"), std::string::npos) << skipped.err;
}

}  // namespace
}  // namespace moerun
