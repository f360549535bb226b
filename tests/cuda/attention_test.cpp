// CUDA attention against its CPU twin: GQA decode at short, odd and long lengths (split-K with combine),
// multi-token prefill with arbitrary positions, the MLA absorbed form (one KV head, k == v, qk 576, v 512,
// 16 and 128 heads), odd head dims with padded strides, invariance to the cache capacity max_len, f32, bf16
// and f16 caches (the CPU twin reads the same cache bits), and MLA at a 32k capacity early and late in the
// context (live-length splits). Every case runs under every kernel layout the device and shapes allow
// (attention_plan::set_layout_override): automatic, mma (MLA absorbed over a 16-bit cache, sm_80+),
// tile32x2, tile32x1, tile16x2, tile16x1 (where the tile fits the shared memory) and warp.
// Cache rows past the longest attended position hold NaN, so a kernel that reads a row it must not read
// fails. Also: bitwise repeatability, a captured decode graph replayed as positions grow on the device (f32
// GQA and the bf16 MLA MMA path), and clear errors for a forced layout that cannot run. Skips without a GPU.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cpu/kv.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

namespace plan = cuda::attention_plan;
using plan::Layout;

// fp32 throughout: scores differ by summation order (<= 576 products, ~1e-6 after scaling), exp by a few
// ulps, and the weighted sum over up to ~4000 rows is added in a different order (tree of splits vs the
// CPU's serial loop), each error a few ulps of |v| <= 1. 16-bit caches widen exactly, so the tiled and warp
// kernels keep this bound over bf16 and f16 caches too.
const float kTolF32 = static_cast<float>(testing::tolerance(testing::Op::attention, testing::Check::cuda).abs);

// The MMA kernel rounds q (to the cache's 16-bit type) and the softmax numerators P (in [0, 1]) to 16 bits:
// bf16 keeps 8 significant bits, a relative error <= 2^-9 per value. With |q| <= 2, |k| <= 1 and 576 dims the
// score error is ~1e-3 after scaling (it moves each softmax weight by ~0.1%), and P's rounding is ~0.2% per
// weight, partly cancelling in the sum and in the normalisation (which adds the rounded P). Rule: the largest
// difference <= 2^-6 of the output's largest magnitude, plus the fp32 bound (f16, 11 bits, sits well inside).
float mma_tolerance(const std::vector<float>& want) {
  float m = 0.0f;
  for (float x : want) m = std::max(m, std::fabs(x));
  return m / 64.0f + kTolF32;
}

const char* name(Layout l) {
  switch (l) {
    case Layout::automatic: return "automatic";
    case Layout::mma: return "mma";
    case Layout::tile32x2: return "tile32x2";
    case Layout::tile32x1: return "tile32x1";
    case Layout::tile16x2: return "tile16x2";
    case Layout::tile16x1: return "tile16x1";
    case Layout::warp: return "warp";
  }
  return "?";
}

// Forces a layout for its lifetime (the override is process-wide; always restored).
struct ForceLayout {
  explicit ForceLayout(Layout l) { plan::set_layout_override(l); }
  ~ForceLayout() { plan::set_layout_override(Layout::automatic); }
  ForceLayout(const ForceLayout&) = delete;
  ForceLayout& operator=(const ForceLayout&) = delete;
};

struct AttnCase {
  std::string name;
  int64_t n_heads, n_kv_heads, qk_dim, v_dim;
  bool mla;                        // one cache row [qk_dim] per position; values are its first v_dim elements
  std::vector<int64_t> positions;  // [n_tokens]
  int64_t max_len;                 // cache capacity given to CUDA (>= every position + 1)
  int64_t pad = 0;                 // extra elements per cache row and per query token (unaligned strides when odd)
  KvType kv = KvType::f32;         // cache element type
};

struct AttnData {
  std::vector<float> q, k, v;     // v empty for MLA; k and v as fp32 (f32 caches)
  std::vector<uint16_t> k16, v16;  // the 16-bit caches (bf16, f16), converted as store_rows does
  AttentionParams params;          // host strides and sizes; pointers unset
  std::vector<float> want;         // the CPU twin's output
};

const void* host_k(const AttnData& d, const AttnCase& c) {
  return c.kv == KvType::f32 ? static_cast<const void*>(d.k.data()) : d.k16.data();
}
const void* host_v(const AttnData& d, const AttnCase& c) {
  if (c.mla) return host_k(d, c);
  return c.kv == KvType::f32 ? static_cast<const void*>(d.v.data()) : d.v16.data();
}

// The CPU twin's output for these positions.
std::vector<float> cpu_reference(const AttnCase& c, const AttnData& d, const std::vector<int64_t>& positions) {
  std::vector<float> want(static_cast<size_t>(static_cast<int64_t>(positions.size()) * c.n_heads * c.v_dim));
  AttentionParams cp = d.params;
  cp.out = want.data(), cp.q = d.q.data(), cp.k = host_k(d, c), cp.v = host_v(d, c);
  cp.positions = positions.data();
  cpu::Context cpu_ctx;
  cpu::attention(cp, cpu_ctx);
  return want;
}

AttnData make_case(const AttnCase& c, uint64_t seed) {
  AttnData d;
  const auto n_tokens = static_cast<int64_t>(c.positions.size());
  int64_t live = 0;
  for (int64_t p : c.positions) live = std::max(live, p + 1);
  AttentionParams& p = d.params;
  p.n_tokens = n_tokens, p.n_heads = c.n_heads, p.n_kv_heads = c.n_kv_heads, p.qk_dim = c.qk_dim, p.v_dim = c.v_dim;
  p.kv_type = c.kv;
  p.q_token_stride = c.n_heads * c.qk_dim + c.pad, p.q_head_stride = c.qk_dim;
  p.k_pos_stride = c.n_kv_heads * c.qk_dim + c.pad, p.k_head_stride = c.mla ? 0 : c.qk_dim;
  p.v_pos_stride = c.mla ? p.k_pos_stride : c.n_kv_heads * c.v_dim + c.pad, p.v_head_stride = c.mla ? 0 : c.v_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.qk_dim));
  p.max_len = c.max_len;

  d.q = uniform(static_cast<size_t>(n_tokens * p.q_token_stride), -2.0f, 2.0f, seed);
  // Rows [0, live) are the cache; rows past it are poison.
  auto cache = [&](int64_t pos_stride, uint64_t s) {
    std::vector<float> m = uniform(static_cast<size_t>(c.max_len * pos_stride), -1.0f, 1.0f, s);
    std::fill(m.begin() + static_cast<std::ptrdiff_t>(live * pos_stride), m.end(),
              std::numeric_limits<float>::quiet_NaN());
    return m;
  };
  auto to16 = [&](const std::vector<float>& m) {
    std::vector<uint16_t> h(m.size());
    cpu::kv_from_f32(c.kv, m.data(), static_cast<int64_t>(m.size()), h.data());
    return h;
  };
  d.k = cache(p.k_pos_stride, seed + 1);
  if (!c.mla) d.v = cache(p.v_pos_stride, seed + 2);
  if (c.kv != KvType::f32) {
    d.k16 = to16(d.k), d.v16 = c.mla ? std::vector<uint16_t>{} : to16(d.v);
    d.k.clear(), d.v.clear();
  }
  d.want = cpu_reference(c, d, c.positions);
  return d;
}

struct DeviceCase {
  DeviceBuffer q, k, v, pos;
};
DeviceCase upload_case(const AttnCase& c, const AttnData& d) {
  const bool f32 = c.kv == KvType::f32;
  return {upload(d.q), f32 ? upload(d.k) : upload(d.k16),
          c.mla ? upload(std::vector<float>{}) : (f32 ? upload(d.v) : upload(d.v16)), upload(c.positions)};
}
AttentionParams device_params(const AttnCase& c, const AttnData& d, const DeviceCase& dc, float* out) {
  AttentionParams p = d.params;
  p.out = out, p.q = dc.q.as<float>(), p.k = dc.k.data(), p.v = c.mla ? dc.k.data() : dc.v.data();
  p.positions = dc.pos.as<int64_t>();
  return p;
}

// Runs cuda::attention on the case with the given capacity; returns output followed by the guard floats.
std::vector<float> run_cuda(const AttnCase& c, const AttnData& d, int64_t max_len, cuda::Context& ctx) {
  const DeviceCase dc = upload_case(c, d);
  DeviceBuffer dout = output_with_guard(d.want.size());
  AttentionParams p = device_params(c, d, dc, dout.as<float>());
  p.max_len = max_len;
  cuda::attention(p, ctx);
  return download(dout);
}

struct Device {
  int smem_optin = 0, cc_major = 0;
};
Device device() {
  Device dev;
  int id = 0;
  MOERUN_CUDA_CHECK(cudaGetDevice(&id));
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&dev.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, id));
  MOERUN_CUDA_CHECK(cudaDeviceGetAttribute(&dev.cc_major, cudaDevAttrComputeCapabilityMajor, id));
  return dev;
}

bool mma_applies(const AttnCase& c) {
  const Device dev = device();
  const bool aligned = (c.n_kv_heads * c.qk_dim + c.pad) % 8 == 0;  // device buffers are 256-byte aligned
  return dev.cc_major >= 8 && plan::choose_mma(c.qk_dim, static_cast<size_t>(dev.smem_optin)).stages > 0 &&
         plan::mma_shapes_fit(c.qk_dim, c.v_dim, c.mla, c.kv == KvType::f32 ? 4 : 2, aligned);
}

// Every layout this device can run for the case's shapes.
std::vector<Layout> layouts_for(const AttnCase& c) {
  const Device dev = device();
  const int elem = c.kv == KvType::f32 ? 4 : 2;
  std::vector<Layout> out{Layout::automatic};
  if (mma_applies(c)) out.push_back(Layout::mma);
  for (Layout l : {Layout::tile32x2, Layout::tile32x1, Layout::tile16x2, Layout::tile16x1})
    if (plan::forced_tile(l, c.qk_dim, c.v_dim, c.mla, elem).bytes() <= static_cast<size_t>(dev.smem_optin))
      out.push_back(l);
  out.push_back(Layout::warp);
  return out;
}

// The bound for a layout: the MMA rule where the MMA kernel runs (forced, or chosen automatically).
float tolerance_for(const AttnCase& c, Layout l, const std::vector<float>& want) {
  return (l == Layout::mma || (l == Layout::automatic && mma_applies(c))) ? mma_tolerance(want) : kTolF32;
}

void expect_matches(const AttnCase& c, uint64_t seed, cuda::Context& ctx) {
  const AttnData d = make_case(c, seed);
  for (Layout l : layouts_for(c)) {
    const ForceLayout force(l);
    const auto got = run_cuda(c, d, c.max_len, ctx);
    EXPECT_LE(max_abs_diff(got, d.want), tolerance_for(c, l, d.want))
        << c.name << " kv=" << kv_type_name(c.kv) << " layout=" << name(l) << " seed=" << seed;
    EXPECT_EQ(first_bad_guard(got, d.want.size()), -1) << c.name << " layout=" << name(l);
  }
}

TEST(AttentionCuda, GqaDecode) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 1;
  // Qwen3-like 32 q / 4 kv heads of 128; the small default model's 9 / 3 heads of 64.
  for (const auto& [heads, kv, dim] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{32, 4, 128}, {9, 3, 64}})
    for (int64_t pos : {0, 1, 2, 31, 32, 33, 127, 128, 129, 1000, 3001, 4095})
      expect_matches(
          {"gqa decode h=" + std::to_string(heads) + "/" + std::to_string(kv) + " pos=" + std::to_string(pos),
           heads,
           kv,
           dim,
           dim,
           false,
           {pos},
           4096},
          seed++, ctx);
}

TEST(AttentionCuda, FewTokenDecode) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // Speculative-style steps: consecutive positions, each token its own causal limit, across split edges.
  expect_matches({"gqa 3 tokens", 32, 4, 128, 128, false, {126, 127, 128}, 2048}, 21, ctx);
  expect_matches({"gqa 4 tokens", 9, 3, 64, 64, false, {3000, 3001, 3002, 3003}, 3500}, 22, ctx);
}

TEST(AttentionCuda, PrefillArbitraryPositions) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  std::vector<int64_t> scattered;  // unordered, with repeats, spanning several tiles
  for (int64_t t = 0; t < 37; ++t) scattered.push_back((t * 97 + 13) % 300);
  expect_matches({"prefill gqa 8/2 d72", 8, 2, 72, 72, false, scattered, 300}, 31, ctx);
  expect_matches({"prefill gqa 10/2 qk40 v24 padded", 10, 2, 40, 24, false, scattered, 300, 3}, 32, ctx);
  std::vector<int64_t> fresh(512);  // a whole prompt: enough query tiles for the one-split path on large GPUs
  for (int64_t t = 0; t < 512; ++t) fresh[static_cast<size_t>(t)] = t;
  expect_matches({"prefill 512 tokens 9/3 d64", 9, 3, 64, 64, false, fresh, 512}, 33, ctx);
  std::vector<int64_t> continued(100);  // a second turn: new tokens after 700 cached ones
  for (int64_t t = 0; t < 100; ++t) continued[static_cast<size_t>(t)] = 700 + t;
  expect_matches({"prefill continued 32/4 d128", 32, 4, 128, 128, false, continued, 1024}, 34, ctx);
}

TEST(AttentionCuda, MlaAbsorbed) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 41;
  // DeepSeek-V2-Lite: 16 heads over the latent cache [kv_lora_rank 512 + rope 64].
  for (int64_t pos : {0, 5, 129, 3001})
    expect_matches({"mla16 decode pos=" + std::to_string(pos), 16, 1, 576, 512, true, {pos}, 4096}, seed++, ctx);
  expect_matches({"mla16 3 tokens", 16, 1, 576, 512, true, {2046, 2047, 2048}, 2100}, seed++, ctx);
  // DeepSeek-V3: 128 heads, 8 query tiles per token.
  expect_matches({"mla128 decode", 128, 1, 576, 512, true, {1999}, 2048}, seed++, ctx);
  std::vector<int64_t> prefill(20);
  for (int64_t t = 0; t < 20; ++t) prefill[static_cast<size_t>(t)] = 100 + t;
  expect_matches({"mla16 prefill", 16, 1, 576, 512, true, prefill, 256}, seed++, ctx);
  expect_matches({"mla16 padded rows", 16, 1, 576, 512, true, {777}, 1000, 5}, seed++, ctx);
}

TEST(AttentionCuda, OddHeadDims) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  expect_matches({"qk3 v5 group5", 10, 2, 3, 5, false, {0, 9, 40}, 64, 1}, 51, ctx);
  expect_matches({"qk129 v1 mha", 6, 6, 129, 1, false, {300, 2}, 400}, 52, ctx);
  expect_matches({"qk40 v72 mqa", 5, 1, 40, 72, false, {1234}, 2000, 2}, 53, ctx);
  expect_matches({"qk575 v511 mla-like", 16, 1, 575, 511, true, {600}, 700}, 54, ctx);
  expect_matches({"qk576 v512 separate k and v", 4, 1, 576, 512, false, {300, 301}, 512}, 55, ctx);
}

TEST(AttentionCuda, MaxLenDoesNotChangeTheResult) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // The grid is sized by max_len; blocks past the token's length must leave no trace (the cache holds 8269
  // rows, of which rows past position 700 are NaN). The bf16 MLA case runs the MMA kernel where it applies.
  for (const AttnCase& c : {AttnCase{"gqa", 32, 4, 128, 128, false, {700}, 8 * 1024 + 77},
                            AttnCase{"mla", 16, 1, 576, 512, true, {700}, 8 * 1024 + 77},
                            AttnCase{"mla128 bf16", 128, 1, 576, 512, true, {700}, 8 * 1024 + 77, 0, KvType::bf16}}) {
    const AttnData d = make_case(c, 61);
    const auto tight = run_cuda(c, d, 701, ctx);
    const auto roomy = run_cuda(c, d, c.max_len, ctx);
    const float tol = tolerance_for(c, Layout::automatic, d.want);
    EXPECT_LE(max_abs_diff(tight, d.want), tol) << c.name << " max_len=701";
    EXPECT_LE(max_abs_diff(roomy, d.want), tol) << c.name << " max_len=" << c.max_len;
    EXPECT_LE(max_abs_diff(roomy, tight), tol) << c.name;
  }
}

TEST(AttentionCuda, RepeatsBitwise) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  for (const AttnCase& c :
       {AttnCase{"mla split decode", 16, 1, 576, 512, true, {3000}, 4096},
        AttnCase{"mla128 bf16 split decode", 128, 1, 576, 512, true, {3000}, 4096, 0, KvType::bf16}}) {
    const AttnData d = make_case(c, 71);
    const auto a = run_cuda(c, d, c.max_len, ctx), b = run_cuda(c, d, c.max_len, ctx);
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_EQ(std::memcmp(&a[i], &b[i], sizeof(float)), 0) << c.name << " i=" << i;
  }
}

// A decode step captured once, replayed with the position advanced in device memory: each replay must attend
// exactly [0, position], as the CPU does for that position (the split count is fixed by max_len; each
// replay's split lengths follow the live position).
void expect_graph_follows_positions(const AttnCase& c, uint64_t seed, const std::vector<int64_t>& replays) {
  const AttnData d = make_case(c, seed);  // rows up to c.positions[0] are live
  const DeviceCase dc = upload_case(c, d);
  DeviceBuffer dout = output_with_guard(d.want.size());
  const AttentionParams p = device_params(c, d, dc, dout.as<float>());
  cuda::Context ctx;
  cuda::attention(p, ctx);  // uncaptured first: sizes the workspace
  ctx.synchronize();
  ctx.begin_capture();
  cuda::attention(p, ctx);
  ctx.end_capture();
  for (int64_t pos : replays) {
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(dc.pos.data(), &pos, sizeof pos, cudaMemcpyHostToDevice, ctx.stream()));
    ctx.replay();
    ctx.synchronize();
    const std::vector<float> want = cpu_reference(c, d, {pos});
    const auto got = download(dout);
    EXPECT_LE(max_abs_diff(got, want), tolerance_for(c, Layout::automatic, want))
        << c.name << " replayed at position " << pos;
    EXPECT_EQ(first_bad_guard(got, want.size()), -1);
  }
}

TEST(AttentionCuda, CapturedGraphFollowsDevicePositions) {
  MOERUN_SKIP_WITHOUT_CUDA();
  expect_graph_follows_positions({"graph gqa", 32, 4, 128, 128, false, {1000}, 1024}, 81, {3, 200, 513, 999, 1000});
  // The bf16 MLA path (the MMA kernel on sm_80+): 128 heads, capacity 4096, live lengths from 4 to 4096.
  expect_graph_follows_positions({"graph mla128 bf16", 128, 1, 576, 512, true, {4095}, 4096, 0, KvType::bf16}, 82,
                                 {3, 700, 2100, 4095});
}

TEST(AttentionCuda, SixteenBitCachesGqa) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 91;
  for (KvType kv : {KvType::bf16, KvType::f16}) {
    for (int64_t pos : {0, 33, 1000, 4095})
      expect_matches({"gqa16 decode pos=" + std::to_string(pos), 32, 4, 128, 128, false, {pos}, 4096, 0, kv}, seed++,
                     ctx);
    expect_matches({"gqa16 3 tokens 9/3 d64", 9, 3, 64, 64, false, {126, 127, 128}, 2048, 0, kv}, seed++, ctx);
    std::vector<int64_t> scattered;
    for (int64_t t = 0; t < 37; ++t) scattered.push_back((t * 97 + 13) % 300);
    expect_matches({"gqa16 prefill padded odd", 10, 2, 40, 24, false, scattered, 300, 3, kv}, seed++, ctx);
    expect_matches({"gqa16 qk3 v5", 10, 2, 3, 5, false, {0, 9, 40}, 64, 1, kv}, seed++, ctx);
  }
}

TEST(AttentionCuda, SixteenBitCachesMla) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  uint64_t seed = 101;
  for (KvType kv : {KvType::bf16, KvType::f16}) {
    for (int64_t pos : {0, 5, 129, 3001})
      expect_matches({"mla16 decode pos=" + std::to_string(pos), 16, 1, 576, 512, true, {pos}, 4096, 0, kv}, seed++,
                     ctx);
    expect_matches({"mla16 3 tokens", 16, 1, 576, 512, true, {2046, 2047, 2048}, 2100, 0, kv}, seed++, ctx);
    // DeepSeek-V3's 128 heads (two MMA blocks of 64 per split), past 2048 rows.
    expect_matches({"mla128 decode", 128, 1, 576, 512, true, {3000}, 4096, 0, kv}, seed++, ctx);
    expect_matches({"mla128 2 tokens", 128, 1, 576, 512, true, {2999, 3000}, 3100, 0, kv}, seed++, ctx);
    std::vector<int64_t> prefill(20);
    for (int64_t t = 0; t < 20; ++t) prefill[static_cast<size_t>(t)] = 100 + t;
    expect_matches({"mla16 prefill", 16, 1, 576, 512, true, prefill, 256, 0, kv}, seed++, ctx);
    // Unaligned rows (the MMA kernel does not apply; the tiles copy element by element).
    expect_matches({"mla16 padded rows", 16, 1, 576, 512, true, {777}, 1000, 5, kv}, seed++, ctx);
    // Smaller MMA-shaped dims: 3 query heads of 64 + 32.
    expect_matches({"mla-like qk64 v32", 3, 1, 64, 32, true, {50, 300}, 512, 0, kv}, seed++, ctx);
  }
}

TEST(AttentionCuda, MlaLongContextLiveSplits) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  // A 32k capacity: the split count is fixed by it, the split lengths by the live position. Early (position
  // 1000: every split shares ~1k rows; rows past it are NaN) and near the end. Layouts: automatic and mma
  // (the decode path), and the 32-row tile (the fallback), to keep the suite short.
  for (int64_t pos : {1000, 32000}) {
    const AttnCase c{"mla128 32k pos=" + std::to_string(pos), 128, 1, 576, 512, true, {pos}, 32768, 0, KvType::bf16};
    const AttnData d = make_case(c, 111 + static_cast<uint64_t>(pos));
    for (Layout l : layouts_for(c)) {
      if (l != Layout::automatic && l != Layout::mma && l != Layout::tile32x2) continue;
      const ForceLayout force(l);
      const auto got = run_cuda(c, d, c.max_len, ctx);
      EXPECT_LE(max_abs_diff(got, d.want), tolerance_for(c, l, d.want)) << c.name << " layout=" << name(l);
      EXPECT_EQ(first_bad_guard(got, d.want.size()), -1) << c.name;
    }
  }
}

TEST(AttentionCuda, ForcedLayoutThatCannotRunThrows) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const AttnCase c{"f32 mla", 16, 1, 576, 512, true, {10}, 64};
  const AttnData d = make_case(c, 121);
  {
    const ForceLayout force(Layout::mma);  // an f32 cache never runs on tensor cores
    EXPECT_THROW(run_cuda(c, d, c.max_len, ctx), Error);
  }
  const AttnCase q8{"q8_0", 4, 1, 64, 64, false, {3}, 64};
  AttnData dq = make_case(q8, 122);
  dq.params.kv_type = KvType::q8_0;  // refused on CUDA before anything is read
  try {
    run_cuda(q8, dq, q8.max_len, ctx);
    ADD_FAILURE() << "a q8_0 cache must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-type"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moerun
