// The memory plan against what the engine really allocates, on every golden model: the weights'
// mapped and owned bytes (found by comparing the prepared weights with the mapped ones), and a
// session's KV cache and workspace (allocated once, never grown by prefill or decode).

#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/plan.h"
#include "support/golden.h"
#include "support/writer.h"

namespace moerun {
namespace {

// Data pointers of every tensor in walk order, and their bytes.
struct Walked {
  std::vector<const void*> data;
  std::vector<size_t> bytes;
};
Walked walk(const ModelWeights& w) {
  Walked out;
  for_each_tensor(w, [&](const WeightSite&, LinearPart, const Tensor& t) {
    out.data.push_back(t.data());
    out.bytes.push_back(t.nbytes());
  });
  return out;
}

struct Measured {
  uint64_t mapped = 0, owned = 0;
};
// A prepared tensor that is a bound (mapped) tensor is a view; any other is a copy made at load. Each
// distinct tensor counts once (a tied head is the embedding).
Measured measure(const Engine& e) {
  std::set<const void*> bound;
  for (const void* p : walk(e.model().weights()).data) bound.insert(p);
  const Walked prepared = walk(e.weights());
  std::set<const void*> seen;
  Measured m;
  for (size_t i = 0; i < prepared.data.size(); ++i) {
    if (!seen.insert(prepared.data[i]).second) continue;
    (bound.count(prepared.data[i]) ? m.mapped : m.owned) += prepared.bytes[i];
  }
  return m;
}

struct Case {
  std::string name;
  EngineOptions options;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* name : {"llama", "llama3_tied", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite",
                           "deepseek_v2", "deepseek_v3", "deepseek_v3_bf16", "qwen2_moe_gelu_tanh", "olmoe_gelu"})
    out.push_back({name, {.backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3", {.mla = MlaMode::naive, .backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3_fp8", {.fp8_dequant = DType::f32, .backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3_fp8", {.fp8_dequant = DType::bf16, .backend = BackendKind::cpu}});
  out.push_back({"deepseek_v3_fp8", {.backend = BackendKind::cpu}});  // FP8 kept: views and f32 scales
  for (KvType kv : {KvType::f32, KvType::bf16, KvType::q8_0}) out.push_back({"qwen3_moe", {.kv_type = kv, .backend = BackendKind::cpu}});
  out.push_back({"llama3_tied", {.backend = BackendKind::cpu, .quant = WeightQuant::q8}});
  out.push_back({"qwen3_moe", {.backend = BackendKind::cpu, .quant = WeightQuant::q4}});
  out.push_back({"deepseek_v3_fp8", {.backend = BackendKind::cpu, .quant = WeightQuant::q4}});
  return out;
}

class Plan : public ::testing::TestWithParam<Case> {};

TEST_P(Plan, AllocationsFollowThePlan) {
  const Case& c = GetParam();
  const std::filesystem::path dir = testing::golden_dir(c.name);
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no golden " << c.name;
  for (int64_t context : {int64_t{0}, int64_t{37}, int64_t{600}}) {
    EngineOptions o = c.options;
    o.context = context;
    o.context_override = true;  // 600 may pass a tiny model's max_position_embeddings
    const Engine e = Engine::load(dir, o);
    const MemoryPlan& p = e.plan();
    ASSERT_TRUE(p.fits);
    const Measured m = measure(e);
    EXPECT_EQ(p.weights_mapped_bytes, m.mapped) << c.name;
    EXPECT_EQ(p.weights_owned_bytes, m.owned) << c.name;
    EXPECT_EQ(p.weights_bytes, m.mapped + m.owned);
    uint64_t by_dtype = 0;
    for (const MemoryPlan::Weights& w : p.weights) by_dtype += w.mapped_bytes + w.owned_bytes;
    EXPECT_EQ(by_dtype, p.weights_bytes);
    // The plan's session part is what a session at that context allocates, before and after running.
    Session s(e);
    EXPECT_EQ(s.context(), p.context);
    const uint64_t planned = p.kv_bytes + p.workspace_bytes;
    EXPECT_EQ(s.memory_bytes(), planned) << c.name << " at context " << p.context;
    std::vector<int32_t> ids(static_cast<size_t>(std::min<int64_t>(p.context - 1, 530)));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + 1) % 50);
    s.forward(ids, /*all_positions=*/true);  // two micro-batches when the context allows
    const int32_t next = 3;
    s.forward_view(std::span<const int32_t>(&next, 1));
    EXPECT_EQ(s.memory_bytes(), planned) << "a forward step grew the session's memory";
    // Every part adds up: on the CPU the host holds everything.
    ASSERT_EQ(p.devices.size(), 1u);
    EXPECT_EQ(p.devices[0].needed_bytes, p.weights_bytes + planned);
    EXPECT_EQ(p.total_bytes, p.devices[0].needed_bytes);
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, Plan, ::testing::ValuesIn(cases()), [](const auto& param_info) {
  std::string n = param_info.param.name + (param_info.param.options.mla == MlaMode::naive ? "_naive" : "") +
                  (param_info.param.options.quant == WeightQuant::q8   ? "_q8"
                   : param_info.param.options.quant == WeightQuant::q4 ? "_q4"
                                                                 : "") +
                  (param_info.param.options.fp8_dequant == DType::f32 ? "_f32" : "");
  return n + "_" + std::to_string(param_info.index);
});

// A plan from a config.json alone: the KV cache and the stored weights follow from the shapes.
TEST(PlanFromConfig, DeepSeekV3AtLongContextDoesNotFitHereAndSaysWhy) {
  const auto cfg = std::filesystem::path(MOERUN_TEST_DATA) / "configs" / "deepseek_v3.json";
  const MemoryPlan p = plan_memory(load_model_config(cfg), {.context = 32768, .kv_type = KvType::f32, .backend = BackendKind::cpu});
  EXPECT_EQ(p.kv_bytes, uint64_t{61} * 32768 * (512 + 64) * 4);
  EXPECT_GT(p.weights_bytes, uint64_t{600} << 30);  // 671B parameters, FP8 kept (one byte each)
  EXPECT_EQ(p.fp8_form, DType::f8_e4m3);
  EXPECT_FALSE(p.fits);
  const std::string why = p.refusal();
  EXPECT_NE(why.find("KV cache"), std::string::npos) << why;
  EXPECT_NE(why.find("--no-memory-check"), std::string::npos) << why;
  EXPECT_EQ(why.find('\n'), std::string::npos) << why;
}

// The CUDA plan (made here without a GPU: 0 bytes available) keeps FP8 as FP8, stores the KV cache in
// bf16 by default, and reserves the ops' scratch on the device: at DeepSeek-V3's longest prefill step
// the MoE rows (512 tokens x (8 routed + 1 shared) experts) dominate it.
TEST(PlanFromConfig, CudaPlansKeepFp8AndReserveTheOpsScratch) {
  const auto cfg = std::filesystem::path(MOERUN_TEST_DATA) / "configs" / "deepseek_v3.json";
  const ModelConfig config = load_model_config(cfg);
  const MemoryPlan p = plan_memory(config, {.context = 4096, .backend = BackendKind::cuda});
  EXPECT_EQ(p.backend, BackendKind::cuda);
  EXPECT_EQ(p.fp8_form, DType::f8_e4m3);
  EXPECT_EQ(p.kv_type, KvType::bf16);
  EXPECT_EQ(p.kv_bytes, uint64_t{61} * 4096 * (512 + 64) * 2);
  uint64_t scratch = 0;
  for (const MemoryPlan::Buffer& b : p.workspace)
    if (b.role == "cuda_scratch") scratch = b.bytes;
  const uint64_t moe_rows = uint64_t{512} * (8 + 1) * (7168 * 2 + 2048 * 4 * 3 + 7168 * 4);  // 8 experts + the shared one
  EXPECT_GE(scratch, moe_rows + moe_rows / 4);
  EXPECT_LT(scratch, moe_rows + moe_rows / 4 + (uint64_t{128} << 20));
  ASSERT_EQ(p.devices.size(), 2u);
  EXPECT_EQ(p.devices[1].needed_bytes, p.weights_device_bytes + p.kv_bytes + p.workspace_bytes);
  EXPECT_FALSE(p.fits);  // no device here (and 671B parameters would not fit one anyway)
  EXPECT_TRUE(p.backend_note.empty());  // asked for explicitly: no fallback
}

// A synthetic model is planned as Model::synthetic makes it, and the engine allocates exactly that.
TEST(PlanFromConfig, SyntheticPlanEqualsTheSyntheticEngine) {
  const auto cfg = std::filesystem::path(MOERUN_TEST_DATA) / "configs" / "qwen3_30b_a3b.json";
  const ModelConfig config = load_model_config(cfg, ConfigOverrides{.num_hidden_layers = 1, .max_routed_experts = 4});
  const EngineOptions o{.context = 64, .backend = BackendKind::cpu};
  const MemoryPlan planned = plan_memory(config, o, WeightSource::synthetic);
  const Engine e = Engine::from_model(Model::synthetic(config), o);
  EXPECT_EQ(planned.weights_bytes, e.plan().weights_bytes);
  EXPECT_EQ(planned.kv_bytes, e.plan().kv_bytes);
  EXPECT_EQ(planned.workspace_bytes, e.plan().workspace_bytes);
}

// A suggestion is a plan that fits: -c N must fit where the requested context did not.
TEST(PlanFromConfig, SuggestedContextFits) {
  const auto cfg = std::filesystem::path(MOERUN_TEST_DATA) / "configs" / "llama3_2_1b.json";
  const ModelConfig config = load_model_config(cfg);
  const uint64_t free = host_available_bytes();
  // A context whose KV cache alone is several times the free memory (64 KiB per position).
  const int64_t huge = static_cast<int64_t>(std::min<uint64_t>(free / (32 * 1024) * 2, uint64_t{1} << 31));
  const MemoryPlan p = plan_memory(config, {.context = huge, .backend = BackendKind::cpu});
  ASSERT_FALSE(p.fits);
  const size_t at = p.suggestions.find("-c ");
  ASSERT_NE(at, std::string::npos) << p.suggestions;
  const int64_t c = std::stoll(p.suggestions.substr(at + 3));
  EXPECT_LT(c, huge);
  EXPECT_TRUE(plan_memory(config, {.context = c, .backend = BackendKind::cpu}).fits);
}

TEST(PlanFromConfig, EngineRefusesBeforeLoadingUnlessTold) {
  const std::filesystem::path dir = testing::golden_dir("llama");
  const EngineOptions huge{.context = int64_t{1} << 31, .context_override = true, .backend = BackendKind::cpu};
  try {
    Engine::load(dir, huge);
    FAIL() << "a context of 2^31 tokens fitted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("does not fit"), std::string::npos) << err.what();
  }
}

// The quantization policy is the library's: quantized weights run on the CPU whoever loads them.
TEST(PlanFromConfig, QuantizedEnginesRunOnTheCpuWithoutBeingTold) {
  const Engine e = Engine::load(testing::golden_dir("llama"), {.quant = WeightQuant::q8});
  EXPECT_EQ(e.backend(), BackendKind::cpu);
  EXPECT_EQ(e.plan().backend, BackendKind::cpu);
}

// Sessions share the engine's one thread pool; steps called from two threads at once are serialized
// and give what they give one after the other.
TEST(EngineThreads, SessionsOnTwoThreadsShareThePoolAndAgree) {
  const Engine e = Engine::load(testing::golden_dir("qwen3_moe"), {.threads = 2, .backend = BackendKind::cpu});
  const std::vector<int32_t> a = {1, 5, 9, 13, 2, 7}, b = {3, 3, 8, 1};
  Session ref_a(e), ref_b(e);
  const std::vector<float> want_a = ref_a.forward(a, true), want_b = ref_b.forward(b, true);
  std::vector<float> got_a, got_b;
  for (int round = 0; round < 20; ++round) {
    Session sa(e), sb(e);
    std::thread ta([&] { got_a = sa.forward(a, true); });
    std::thread tb([&] { got_b = sb.forward(b, true); });
    ta.join();
    tb.join();
    ASSERT_EQ(got_a, want_a);
    ASSERT_EQ(got_b, want_b);
  }
}

}  // namespace
}  // namespace moerun
