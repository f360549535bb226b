// CUDA MoE experts against the CPU twin: the decode path (n_tokens <= 8: device plan, GEMV over each
// expert's tokens) and the prefill path (device plan, grouped tensor-core GEMMs), f32, bf16, f16 and
// FP8 (f8_e4m3 with block scales, also blocks that do not divide the rows) experts, top_k 2 and 8, odd
// sizes (misaligned rows, scalar tails), the decode/prefill boundary (8 and 9 tokens), the real
// DeepSeek-V3 shape (256 experts, hidden 7168, intermediate 2048, top-8; the 256 table entries point
// into a few distinct weight buffers, which the kernels cannot tell), every activation on both paths,
// experts nobody selected (null table entries, so reading one faults), all pairs on one expert (rows
// over several GEMM tiles), graph capture of both paths (replay equals the uncaptured bits, and reads
// new ids), bad ids, determinism; and the fused shared expert (MoeParams::shared_gate) on both paths,
// at small shapes and DeepSeek-V3's, with null routed experts, and under graph replay. Host<->device copies are
// ordered on the context's stream. Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cuda::testing::first_bad_guard;
using cuda::testing::kGuard;
using cuda::testing::kGuardCount;
using cuda::testing::uniform;

constexpr const char* kNoDevice = "no usable CUDA device (cudaGetDeviceCount failed or found none)";
constexpr int64_t kDecodeMaxTokens = 8;  // moe.cu's switch between the decode and prefill paths

// Stream-ordered copies: the op runs on ctx's non-blocking stream, so inputs go there too (a pageable
// cudaMemcpy on the legacy stream may still be landing when the op starts).
template <class T>
void copy_to(cuda::Context& ctx, const cuda::DeviceBuffer& d, const std::vector<T>& host) {
  if (!host.empty())
    MOERUN_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice,
                                      ctx.stream()));
  ctx.synchronize();  // the host vector may go away; the stream has the data before anything after it
}
template <class T>
cuda::DeviceBuffer upload(cuda::Context& ctx, const std::vector<T>& host) {
  cuda::DeviceBuffer d(std::max<size_t>(host.size(), 1) * sizeof(T), "test input");
  copy_to(ctx, d, host);
  return d;
}
inline cuda::DeviceBuffer output_with_guard(cuda::Context& ctx, size_t n) {
  std::vector<float> host(n + kGuardCount, kGuard);
  std::fill(host.begin(), host.begin() + static_cast<std::ptrdiff_t>(n), std::nanf(""));
  return upload(ctx, host);
}
inline std::vector<float> download(cuda::Context& ctx, const cuda::DeviceBuffer& d) {
  std::vector<float> host(d.bytes() / sizeof(float));
  MOERUN_CUDA_CHECK(cudaMemcpyAsync(host.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return host;
}

// Tolerances on max |got - want| relative to max |want| (outputs are O(1) by construction), from
// tests/support/op_tolerances.h: decode (any dtype) and f32 prefill sum the same fp32 products in
// another order; bf16 and f16 prefill round x and h to the weight dtype for the tensor-core GEMMs.
// FP8 has no moe row there yet and borrows bf16's: its decode applies the block scale once per 16
// products instead of once per weight (an ulp per term), and its prefill also rounds w * scale to
// bf16, an error of the same size as the rounding of x, well inside bf16's budget.
double tolerance(DType dt, int64_t n_tokens) {
  using testing::Check;
  const bool tensor = n_tokens > kDecodeMaxTokens && dt != DType::f32;
  const DType row = dt == DType::f8_e4m3 ? DType::bf16 : dt;
  return testing::tolerance(testing::Op::moe, tensor ? Check::cuda_tensor : Check::cuda, row).mag;
}
const double kTolFp32 = tolerance(DType::f32, 1);

struct MoeCase {
  DType dtype;
  int64_t top_k, n_experts, hidden, intermediate;
  int64_t block_out = 128, block_in = 128;  // FP8 only
  int64_t distinct = 0;       // > 0: expert e uses physical weights e % distinct (big shapes)
  bool all_usable = false;    // false: experts with e % 3 == 1 have no weights (null entries)
  bool shared = false;        // a shared expert (MoeParams::shared_gate) of the same shape and dtype
};

std::string describe(const MoeCase& c) {
  std::ostringstream os;
  os << dtype_name(c.dtype) << " top_k=" << c.top_k << " E=" << c.n_experts << " D=" << c.hidden
     << " I=" << c.intermediate;
  if (c.dtype == DType::f8_e4m3) os << " blocks=" << c.block_out << "x" << c.block_in;
  if (c.shared) os << " +shared";
  return os.str();
}

// A matrix [rows, cols] of `dtype` as bytes, and for FP8 its block scales; values of about +-r.
struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> scale;  // FP8: [ceil(rows / block_out), ceil(cols / block_in)]
};

Matrix make_matrix(const MoeCase& c, int64_t rows, int64_t cols, float r, uint64_t seed) {
  Matrix m;
  const size_t n = static_cast<size_t>(rows * cols);
  if (c.dtype != DType::f8_e4m3) {
    const std::vector<float> v = uniform(n, -r, r, seed);
    m.bytes.resize(n * dtype_size(c.dtype));
    for (size_t i = 0; i < n; ++i) {
      if (c.dtype == DType::f32) {
        std::memcpy(m.bytes.data() + 4 * i, &v[i], 4);
      } else {
        const uint16_t h =
            c.dtype == DType::bf16 ? cpu::f32_to_bf16(v[i]) : cuda::testing::f32_to_f16_bits(v[i]);
        std::memcpy(m.bytes.data() + 2 * i, &h, 2);
      }
    }
    return m;
  }
  // E4M3 bytes with exponent field 4..10 (magnitudes 1/8 .. 15: normal, never zero, never NaN) and
  // a random sign; the scales bring the products to about +-r.
  std::mt19937_64 rng(seed);
  m.bytes.resize(n);
  for (uint8_t& b : m.bytes) {
    const uint64_t u = rng();
    b = static_cast<uint8_t>(((u & 1u) << 7) | ((4u + (u >> 1) % 7u) << 3) | ((u >> 8) & 7u));
  }
  const int64_t sr = (rows + c.block_out - 1) / c.block_out, sc = (cols + c.block_in - 1) / c.block_in;
  m.scale = uniform(static_cast<size_t>(sr * sc), 0.1f * r, 0.3f * r, seed + 1);
  return m;
}

// The experts of one layer on both sides.
struct Experts {
  MoeCase c;
  std::vector<Matrix> gate, up, down;  // physical weights: [E] or [distinct]; empty for unused experts
  Matrix sgate, sup, sdown;            // the shared expert (c.shared)
  const void* dsg = nullptr, *dsu = nullptr, *dsd = nullptr;  // ... on the device
  const float* dsgs = nullptr, *dsus = nullptr, *dsds = nullptr;
  std::vector<cuda::DeviceBuffer> dbufs;
  std::vector<const void*> hgate_tbl, hup_tbl, hdown_tbl;  // host pointers (CPU twin)
  std::vector<const float*> hgs_tbl, hus_tbl, hds_tbl;
  cuda::DeviceBuffer gate_tbl, up_tbl, down_tbl, gs_tbl, us_tbl, ds_tbl;  // device arrays of device pointers

  bool usable(int64_t e) const { return c.all_usable || e % 3 != 1; }
  bool fp8() const { return c.dtype == DType::f8_e4m3; }

  Experts(const MoeCase& mc, uint64_t seed, cuda::Context& ctx) : c(mc) {
    const size_t E = static_cast<size_t>(c.n_experts);
    const size_t P = c.distinct > 0 ? static_cast<size_t>(c.distinct) : E;
    gate.resize(P);
    up.resize(P);
    down.resize(P);
    std::vector<const void*> dg(P, nullptr), du(P, nullptr), dd(P, nullptr);
    std::vector<const float*> dgs(P, nullptr), dus(P, nullptr), dds(P, nullptr);
    const float rg = 1.0f / std::sqrt(static_cast<float>(c.hidden)),
                rd = 2.0f / std::sqrt(static_cast<float>(c.intermediate));
    auto put = [&](const std::vector<uint8_t>& bytes) {
      dbufs.push_back(upload(ctx, bytes));
      return static_cast<const void*>(dbufs.back().data());
    };
    auto put_scale = [&](const std::vector<float>& s) {
      if (s.empty()) return static_cast<const float*>(nullptr);
      dbufs.push_back(upload(ctx, s));
      return dbufs.back().as<const float>();
    };
    for (size_t q = 0; q < P; ++q) {
      if (c.distinct == 0 && !usable(static_cast<int64_t>(q))) continue;
      gate[q] = make_matrix(c, c.intermediate, c.hidden, rg, seed + 3 * q);
      up[q] = make_matrix(c, c.intermediate, c.hidden, rg, seed + 3 * q + 1);
      down[q] = make_matrix(c, c.hidden, c.intermediate, rd, seed + 3 * q + 2);
      dg[q] = put(gate[q].bytes), du[q] = put(up[q].bytes), dd[q] = put(down[q].bytes);
      dgs[q] = put_scale(gate[q].scale), dus[q] = put_scale(up[q].scale), dds[q] = put_scale(down[q].scale);
    }
    hgate_tbl.assign(E, nullptr), hup_tbl.assign(E, nullptr), hdown_tbl.assign(E, nullptr);
    hgs_tbl.assign(E, nullptr), hus_tbl.assign(E, nullptr), hds_tbl.assign(E, nullptr);
    std::vector<const void*> tg(E, nullptr), tu(E, nullptr), td(E, nullptr);
    std::vector<const float*> tgs(E, nullptr), tus(E, nullptr), tds(E, nullptr);
    for (size_t e = 0; e < E; ++e) {
      if (!usable(static_cast<int64_t>(e))) continue;
      const size_t q = e % P;
      hgate_tbl[e] = gate[q].bytes.data(), hup_tbl[e] = up[q].bytes.data(), hdown_tbl[e] = down[q].bytes.data();
      if (fp8()) hgs_tbl[e] = gate[q].scale.data(), hus_tbl[e] = up[q].scale.data(), hds_tbl[e] = down[q].scale.data();
      tg[e] = dg[q], tu[e] = du[q], td[e] = dd[q];
      tgs[e] = dgs[q], tus[e] = dus[q], tds[e] = dds[q];
    }
    gate_tbl = upload(ctx, tg), up_tbl = upload(ctx, tu), down_tbl = upload(ctx, td);
    gs_tbl = upload(ctx, tgs), us_tbl = upload(ctx, tus), ds_tbl = upload(ctx, tds);
    if (c.shared) {  // its own weights, unlike every routed expert's
      sgate = make_matrix(c, c.intermediate, c.hidden, rg, seed + 100003);
      sup = make_matrix(c, c.intermediate, c.hidden, rg, seed + 100004);
      sdown = make_matrix(c, c.hidden, c.intermediate, rd, seed + 100005);
      dsg = put(sgate.bytes), dsu = put(sup.bytes), dsd = put(sdown.bytes);
      dsgs = put_scale(sgate.scale), dsus = put_scale(sup.scale), dsds = put_scale(sdown.scale);
    }
  }

  // out = moe(x, ids, weights) by the CPU twin (on a thread pool: the big shapes are GFLOPs).
  std::vector<float> reference(const std::vector<float>& x, const std::vector<int32_t>& ids,
                               const std::vector<float>& w, int64_t n_tokens, int64_t top_k) const {
    static cpu::ThreadPool pool(0);
    std::vector<float> out(static_cast<size_t>(n_tokens * c.hidden));
    cpu::Context cpu_ctx(&pool);
    MoeParams p = params(out.data(), x.data(), ids.data(), w.data(), n_tokens, top_k);
    p.gate = hgate_tbl.data(), p.up = hup_tbl.data(), p.down = hdown_tbl.data();
    p.gate_scale = fp8() ? hgs_tbl.data() : nullptr;
    p.up_scale = fp8() ? hus_tbl.data() : nullptr;
    p.down_scale = fp8() ? hds_tbl.data() : nullptr;
    set_host_shared(p);
    cpu::moe(p, cpu_ctx);
    return out;
  }

  // The CPU twin's shared expert: host pointers.
  void set_host_shared(MoeParams& p) const {
    if (!c.shared) return;
    p.shared_gate = sgate.bytes.data(), p.shared_up = sup.bytes.data(), p.shared_down = sdown.bytes.data();
    p.shared_gate_scale = fp8() ? sgate.scale.data() : nullptr;
    p.shared_up_scale = fp8() ? sup.scale.data() : nullptr;
    p.shared_down_scale = fp8() ? sdown.scale.data() : nullptr;
  }

  MoeParams params(float* out, const float* x, const int32_t* ids, const float* w, int64_t n_tokens,
                   int64_t top_k) const {
    return {.out = out,
            .x = x,
            .expert_ids = ids,
            .expert_weights = w,
            .gate = gate_tbl.as<const void* const>(),
            .up = up_tbl.as<const void* const>(),
            .down = down_tbl.as<const void* const>(),
            .weight_dtype = c.dtype,
            .n_tokens = n_tokens,
            .top_k = top_k,
            .n_experts = c.n_experts,
            .hidden = c.hidden,
            .intermediate = c.intermediate,
            .gate_scale = fp8() ? gs_tbl.as<const float* const>() : nullptr,
            .up_scale = fp8() ? us_tbl.as<const float* const>() : nullptr,
            .down_scale = fp8() ? ds_tbl.as<const float* const>() : nullptr,
            .block_out = c.block_out,
            .block_in = c.block_in,
            .shared_gate = dsg,
            .shared_up = dsu,
            .shared_down = dsd,
            .shared_gate_scale = dsgs,
            .shared_up_scale = dsus,
            .shared_down_scale = dsds};
  }
};

// Router-like ids: top_k distinct usable experts per token; only the first `pool` usable ones are ever
// chosen (three quarters of them), so the rest are unused too.
std::vector<int32_t> random_ids(const Experts& ex, int64_t n_tokens, int64_t top_k, uint64_t seed) {
  std::vector<int32_t> usable;
  for (int32_t e = 0; e < ex.c.n_experts; ++e)
    if (ex.usable(e)) usable.push_back(e);
  const size_t pool = std::max<size_t>(static_cast<size_t>(top_k), usable.size() * 3 / 4);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::shuffle(usable.begin(), usable.begin() + static_cast<std::ptrdiff_t>(pool), rng);
    for (int64_t k = 0; k < top_k; ++k) ids.push_back(usable[static_cast<size_t>(k)]);
  }
  return ids;
}

// max |got - want| / max |want|, with NaN/Inf in got failing outright.
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double scale = 0.0;
  for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  return cuda::testing::max_abs_diff(got, want) / std::max(scale, 1e-30);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b, size_t n) {
  return a.size() >= n && b.size() >= n && std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0;
}

// Runs one case through both backends and checks the result, the guard and that a second run gives
// identical bits.
void run_case(const Experts& ex, const std::vector<int32_t>& ids, int64_t n_tokens, int64_t top_k, uint64_t seed,
              cuda::Context& ctx) {
  const MoeCase& c = ex.c;
  SCOPED_TRACE(describe(c) + " n_tokens=" + std::to_string(n_tokens) + " top_k=" + std::to_string(top_k) +
               " seed=" + std::to_string(seed));
  const std::vector<float> x = uniform(static_cast<size_t>(n_tokens * c.hidden), -1.0f, 1.0f, seed + 11);
  const std::vector<float> w = uniform(ids.size(), 0.05f, 1.0f, seed + 12);
  const std::vector<float> want = ex.reference(x, ids, w, n_tokens, top_k);

  const auto dx = upload(ctx, x), dids = upload(ctx, ids), dw = upload(ctx, w);
  const auto dout = output_with_guard(ctx, want.size());  // NaN: out must be overwritten, not accumulated into
  const MoeParams p = ex.params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n_tokens, top_k);
  cuda::moe(p, ctx);
  const std::vector<float> got = download(ctx, dout);
  const double err = rel_error(got, want);
  EXPECT_LE(err, tolerance(c.dtype, n_tokens));
  EXPECT_EQ(first_bad_guard(got, want.size()), -1);

  cuda::moe(p, ctx);  // deterministic: no atomics, fixed summation order
  EXPECT_TRUE(same_bits(got, download(ctx, dout), want.size())) << "a second run changed the bits";
}

TEST(MoeCuda, MatchesCpuDecodeAndPrefill) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 1;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3}) {
    // (top_k, E, D, I, block_out, block_in): aligned rows and Mixtral-like top-2; odd sizes (rows not
    // 16-byte aligned, scalar tails) with DeepSeek/Qwen3-like top-8; for FP8 also scale blocks that
    // are no multiple of 16 and cut rows mid-tile.
    std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>> shapes = {
        {2, 16, 256, 96, 128, 128}, {8, 64, 130, 70, 128, 128}};
    if (dt == DType::f8_e4m3) shapes.emplace_back(8, 64, 200, 72, 48, 24);
    for (const auto& [k, E, D, I, bo, bi] : shapes) {
      MoeCase mc{.dtype = dt, .top_k = k, .n_experts = E, .hidden = D, .intermediate = I};
      mc.block_out = bo, mc.block_in = bi;
      const Experts ex(mc, seed * 7919, ctx);
      for (const int64_t n : {int64_t{1}, int64_t{2}, kDecodeMaxTokens, kDecodeMaxTokens + 1, int64_t{37},
                              int64_t{300}}) {
        run_case(ex, random_ids(ex, n, k, seed), n, k, seed, ctx);
        ++seed;
      }
    }
  }
}

// The real DeepSeek-V3 layer: 256 experts (all held), hidden 7168, intermediate 2048, top-8, bf16 and
// FP8 with 128 x 128 scales, on both sides of the decode/prefill boundary. The table entries share three
// physical weight sets to keep memory and set-up small.
TEST(MoeCuda, DeepSeekV3Shape) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 900;
  for (const DType dt : {DType::bf16, DType::f8_e4m3}) {
    const Experts ex({.dtype = dt,
                      .top_k = 8,
                      .n_experts = 256,
                      .hidden = 7168,
                      .intermediate = 2048,
                      .distinct = 3,
                      .all_usable = true},
                     seed * 31, ctx);
    for (const int64_t n : {int64_t{1}, int64_t{4}, kDecodeMaxTokens, kDecodeMaxTokens + 1, int64_t{64}}) {
      run_case(ex, random_ids(ex, n, 8, seed), n, 8, seed, ctx);
      ++seed;
    }
  }
}

// hidden_act on both paths: the decode kernel applies it to the gate/up totals, the tensor-core GEMM
// in its epilogue (bf16 and FP8 experts).
TEST(MoeCuda, AppliesEveryActivationOnBothPaths) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  for (const DType dt : {DType::bf16, DType::f8_e4m3}) {
    const Experts ex({.dtype = dt, .top_k = 4, .n_experts = 16, .hidden = 160, .intermediate = 96}, 77, ctx);
    for (const Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
      for (const int64_t n : {int64_t{3}, int64_t{20}}) {
        SCOPED_TRACE(describe(ex.c) + " act=" + std::to_string(static_cast<int>(act)) + " n=" + std::to_string(n));
        const std::vector<int32_t> ids = random_ids(ex, n, 4, 10 + static_cast<uint64_t>(n));
        const std::vector<float> x = uniform(static_cast<size_t>(n * ex.c.hidden), -1.0f, 1.0f, 20);
        const std::vector<float> w = uniform(ids.size(), 0.05f, 1.0f, 21);
        MoeParams cp = {};
        std::vector<float> want(static_cast<size_t>(n * ex.c.hidden));
        {
          static cpu::ThreadPool pool(0);
          cpu::Context cpu_ctx(&pool);
          cp = ex.params(want.data(), x.data(), ids.data(), w.data(), n, 4);
          cp.gate = ex.hgate_tbl.data(), cp.up = ex.hup_tbl.data(), cp.down = ex.hdown_tbl.data();
          cp.gate_scale = ex.fp8() ? ex.hgs_tbl.data() : nullptr;
          cp.up_scale = ex.fp8() ? ex.hus_tbl.data() : nullptr;
          cp.down_scale = ex.fp8() ? ex.hds_tbl.data() : nullptr;
          cp.act = act;
          cpu::moe(cp, cpu_ctx);
        }
        const auto dx = upload(ctx, x), dids = upload(ctx, ids), dw = upload(ctx, w);
        const auto dout = output_with_guard(ctx, want.size());
        MoeParams gp = ex.params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n, 4);
        gp.act = act;
        cuda::moe(gp, ctx);
        const std::vector<float> got = download(ctx, dout);
        EXPECT_LE(rel_error(got, want), tolerance(dt, n));
        EXPECT_EQ(first_bad_guard(got, want.size()), -1);
      }
    }
  }
}

// Expert parallel: the router selects experts this rank does not hold (null table entries); both
// paths skip their pairs exactly as the CPU twin does.
TEST(MoeCuda, SelectedNullExpertsAreSkippedOnBothPaths) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 500;
  for (const DType dt : {DType::f32, DType::bf16, DType::f8_e4m3}) {
    const Experts ex({.dtype = dt, .top_k = 4, .n_experts = 12, .hidden = 128, .intermediate = 64}, seed * 31, ctx);
    for (const int64_t n : {1, 3, 40}) {
      std::mt19937_64 rng(seed);
      std::vector<int32_t> all(12), ids;
      std::iota(all.begin(), all.end(), 0);
      for (int64_t t = 0; t < n; ++t) {  // any experts, held or not
        std::shuffle(all.begin(), all.end(), rng);
        ids.insert(ids.end(), all.begin(), all.begin() + 4);
      }
      run_case(ex, ids, n, 4, seed, ctx);
      ++seed;
    }
  }
}

TEST(MoeCuda, AllPairsOnOneExpert) {
  // One expert gets every pair (twice per token with top_k 2: duplicates are legal and must both
  // count); with 50 and 200 tokens its rows span several GEMM row tiles.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 500;
  for (const DType dt : {DType::f32, DType::bf16, DType::f8_e4m3}) {
    const Experts ex({.dtype = dt, .top_k = 2, .n_experts = 8, .hidden = 192, .intermediate = 64}, seed, ctx);
    for (const int64_t n : {1, 3, 5, 50, 200}) {
      run_case(ex, std::vector<int32_t>(static_cast<size_t>(n * 2), 5), n, 2, seed, ctx);
      run_case(ex, std::vector<int32_t>(static_cast<size_t>(n), 3), n, 1, seed + 1, ctx);
      seed += 2;
    }
  }
}

// Both paths are captured once and replayed, without and with a shared expert: the replay gives the
// uncaptured run's bits, and after the ids and x change on the device it reads them there (no host
// round trip baked into the graph).
TEST(MoeCuda, CapturedStepsReplayExactlyWithNewIds) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  for (const auto& [dt, shared] : {std::pair{DType::bf16, false}, std::pair{DType::f8_e4m3, false},
                                   std::pair{DType::bf16, true}, std::pair{DType::f8_e4m3, true}}) {
    const Experts ex(
        {.dtype = dt, .top_k = 8, .n_experts = 64, .hidden = 256, .intermediate = 128, .shared = shared}, 42, ctx);
    for (const int64_t n : {int64_t{1}, kDecodeMaxTokens, kDecodeMaxTokens + 1, int64_t{48}}) {
      SCOPED_TRACE(describe(ex.c) + " n_tokens=" + std::to_string(n));
      const int64_t D = ex.c.hidden, K = ex.c.top_k;
      std::vector<float> x = uniform(static_cast<size_t>(n * D), -1.0f, 1.0f, 1);
      std::vector<int32_t> ids = random_ids(ex, n, K, 2);
      std::vector<float> w = uniform(ids.size(), 0.05f, 1.0f, 3);
      const auto dx = upload(ctx, x), dids = upload(ctx, ids), dw = upload(ctx, w);
      const auto dout = output_with_guard(ctx, static_cast<size_t>(n * D));
      const MoeParams p = ex.params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n, K);
      cuda::moe(p, ctx);  // also sizes the workspace outside the capture
      const std::vector<float> uncaptured = download(ctx, dout);
      ctx.begin_capture();
      cuda::moe(p, ctx);
      ctx.end_capture();
      copy_to(ctx, dout, std::vector<float>(static_cast<size_t>(n * D), std::nanf("")));
      ctx.replay();
      EXPECT_TRUE(same_bits(uncaptured, download(ctx, dout), static_cast<size_t>(n * D)))
          << "the replay differs from the uncaptured run";
      for (uint64_t step = 0; step < 2; ++step) {
        x = uniform(x.size(), -1.0f, 1.0f, 100 + step);
        ids = random_ids(ex, n, K, 200 + step);
        w = uniform(ids.size(), 0.05f, 1.0f, 300 + step);
        copy_to(ctx, dx, x), copy_to(ctx, dids, ids), copy_to(ctx, dw, w);
        ctx.replay();
        const std::vector<float> got = download(ctx, dout);
        EXPECT_LE(rel_error(got, ex.reference(x, ids, w, n, K)), tolerance(dt, n)) << "replay " << step;
        EXPECT_EQ(first_bad_guard(got, static_cast<size_t>(n * D)), -1);
      }
      ctx.drop_graph();
    }
  }
}

TEST(MoeCuda, BadIdsContributeNothing) {
  // The device cannot report an id outside [0, n_experts): on both paths its pair adds nothing (and
  // reads no weights), as if its routing weight were zero.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const Experts ex({.dtype = DType::bf16, .top_k = 2, .n_experts = 6, .hidden = 64, .intermediate = 32}, 9, ctx);
  for (const int64_t n : {int64_t{1}, int64_t{12}}) {
    SCOPED_TRACE(n);
    std::vector<int32_t> ids = random_ids(ex, n, 2, 1);
    const std::vector<float> x = uniform(static_cast<size_t>(n * ex.c.hidden), -1.0f, 1.0f, 2);
    std::vector<float> w = uniform(ids.size(), 0.1f, 1.0f, 3);
    std::vector<int32_t> bad = ids;
    bad[1] = 6;
    if (n > 1) bad[7] = -3;
    const auto dx = upload(ctx, x), dids = upload(ctx, bad), dw = upload(ctx, w);
    const auto dout = output_with_guard(ctx, static_cast<size_t>(n * ex.c.hidden));
    cuda::moe(ex.params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n, 2), ctx);
    w[1] = 0.0f;  // the reference: the bad pairs keep a valid id and get weight zero
    if (n > 1) w[7] = 0.0f;
    EXPECT_LE(rel_error(download(ctx, dout), ex.reference(x, ids, w, n, 2)), tolerance(DType::bf16, n));
  }
}

// The shared expert (MoeParams::shared_gate), one more pair of every token run as a virtual expert
// after the routed ones, on both paths against the CPU twin (which adds it op for op as the executor's
// separate FFN and add did): every weight dtype, aligned and odd shapes (rows not 16-byte aligned,
// scalar tails, FP8 scale blocks that cut rows), routed experts with null entries, both sides of the
// decode/prefill boundary, and enough tokens that the shared expert's rows span several GEMM tiles.
TEST(MoeCuda, SharedExpertMatchesCpu) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 700;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3}) {
    std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>> shapes = {
        {2, 16, 256, 96, 128, 128}, {8, 64, 130, 70, 128, 128}};
    if (dt == DType::f8_e4m3) shapes.emplace_back(8, 64, 200, 72, 48, 24);
    for (const auto& [k, E, D, I, bo, bi] : shapes) {
      MoeCase mc{.dtype = dt, .top_k = k, .n_experts = E, .hidden = D, .intermediate = I, .shared = true};
      mc.block_out = bo, mc.block_in = bi;
      const Experts ex(mc, seed * 7919, ctx);
      for (const int64_t n : {int64_t{1}, int64_t{2}, int64_t{5}, kDecodeMaxTokens, kDecodeMaxTokens + 1,
                              int64_t{37}, int64_t{300}}) {
        run_case(ex, random_ids(ex, n, k, seed), n, k, seed, ctx);
        ++seed;
      }
    }
  }
}

// DeepSeek-V3's MoE layer with its shared expert (width 2048, as the routed ones): 256 routed experts
// (three physical weight sets) + the shared one, bf16 and FP8 with 128 x 128 scales, at a decode
// token, a full decode step, the first prefill width and a prefill chunk.
TEST(MoeCuda, SharedExpertAtDeepSeekV3Shape) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 950;
  for (const DType dt : {DType::bf16, DType::f8_e4m3}) {
    const Experts ex({.dtype = dt,
                      .top_k = 8,
                      .n_experts = 256,
                      .hidden = 7168,
                      .intermediate = 2048,
                      .distinct = 3,
                      .all_usable = true,
                      .shared = true},
                     seed * 31, ctx);
    for (const int64_t n : {int64_t{1}, kDecodeMaxTokens, kDecodeMaxTokens + 1, int64_t{64}}) {
      run_case(ex, random_ids(ex, n, 8, seed), n, 8, seed, ctx);
      ++seed;
    }
  }
}

// Expert parallel with the shared expert on this rank: selected experts held elsewhere (null entries)
// add nothing, and a token whose selected experts are all elsewhere still gets the shared expert.
TEST(MoeCuda, SharedExpertWithNullRoutedExperts) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 800;
  for (const DType dt : {DType::f32, DType::bf16, DType::f8_e4m3}) {
    const Experts ex(
        {.dtype = dt, .top_k = 2, .n_experts = 12, .hidden = 128, .intermediate = 64, .shared = true}, seed * 31, ctx);
    for (const int64_t n : {1, 3, 40}) {
      std::vector<int32_t> ids;
      for (int64_t t = 0; t < n; ++t) {  // token 0: experts 1 and 4 (both null); others: one held, 7 not
        ids.push_back(t == 0 ? 1 : static_cast<int32_t>((3 * t) % 12));
        ids.push_back(t == 0 ? 4 : 7);
      }
      run_case(ex, ids, n, 2, seed, ctx);
      ++seed;
    }
  }
}

TEST(MoeCuda, RejectsUnsupportedParams) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const Experts ex({.dtype = DType::f32, .top_k = 1, .n_experts = 2, .hidden = 8, .intermediate = 8}, 1, ctx);
  const auto buf = output_with_guard(ctx, 64);
  MoeParams p = ex.params(buf.as<float>(), buf.as<float>(), buf.as<int32_t>(), buf.as<float>(), 1, 1);
  p.weight_dtype = DType::f8_e4m3;  // without scale tables
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.weight_dtype = DType::q8_0;
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.weight_dtype = DType::f32;
  p.top_k = 0;
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.top_k = 1;
  p.n_experts = 4096;  // beyond the plan's shared-memory counters
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.n_experts = 2;
  p.shared_gate = buf.data(), p.shared_up = buf.data();  // a shared expert without its down matrix
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.shared_down = buf.data();
  p.weight_dtype = DType::f8_e4m3;  // FP8: the routed scales alone are not enough
  p.gate_scale = p.up_scale = p.down_scale = ex.gs_tbl.as<const float* const>();
  EXPECT_THROW(cuda::moe(p, ctx), Error);
}

}  // namespace
}  // namespace moerun
