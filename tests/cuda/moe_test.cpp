// CUDA MoE experts against the CPU twin: the decode path (n_tokens <= 4: device-side ids, GEMV) and
// the prefill path (host plan, gathered rows, cuBLAS per expert), f32, bf16 and f16 experts, top_k 2
// and 8, odd sizes (misaligned 16-bit rows), experts nobody selected (their table entries are null, so
// reading one faults), all pairs on one expert, graph replay with new ids, bad ids, determinism.
// Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using cuda::testing::download;
using cuda::testing::first_bad_guard;
using cuda::testing::output_with_guard;
using cuda::testing::uniform;
using cuda::testing::upload;

constexpr const char* kNoDevice = "no usable CUDA device (cudaGetDeviceCount failed or found none)";
constexpr int64_t kDecodeMaxTokens = 4;  // moe.cu's switch between the decode and prefill paths

// Tolerances on max |got - want| relative to max |want| (outputs are O(1) by construction), from
// tests/support/op_tolerances.h: decode (any dtype) and f32 prefill sum the same fp32 products in
// another order; bf16 and f16 prefill round x and h to the weight dtype for the tensor-core GEMMs.
double tolerance(DType dt, int64_t n_tokens) {
  using testing::Check;
  const bool tensor = n_tokens > kDecodeMaxTokens && dt != DType::f32;
  return testing::tolerance(testing::Op::moe, tensor ? Check::cuda_tensor : Check::cuda, dt).mag;
}
const double kTolFp32 = tolerance(DType::f32, 1);

struct MoeCase {
  DType dtype;
  int64_t n_tokens, top_k, n_experts, hidden, intermediate;
};

std::string describe(const MoeCase& c) {
  std::ostringstream os;
  os << dtype_name(c.dtype) << " n_tokens=" << c.n_tokens << " top_k=" << c.top_k << " E=" << c.n_experts
     << " D=" << c.hidden << " I=" << c.intermediate;
  return os.str();
}

// The experts of one layer on both sides. Experts with e % 3 == 1 have no weights at all (null table
// entries on host and device): routing never selects them, and a path that read one would fault.
struct Experts {
  MoeCase c;
  std::vector<cuda::testing::HostWeights> gate, up, down;  // [E]; empty for unused experts
  std::vector<cuda::DeviceBuffer> dgate, dup, ddown;
  std::vector<const void*> hgate_tbl, hup_tbl, hdown_tbl;  // host pointers (CPU twin)
  cuda::DeviceBuffer gate_tbl, up_tbl, down_tbl;           // device arrays of device pointers

  static bool usable(int64_t e) { return e % 3 != 1; }

  Experts(const MoeCase& mc, uint64_t seed) : c(mc) {
    const size_t E = static_cast<size_t>(c.n_experts), DI = static_cast<size_t>(c.hidden * c.intermediate);
    gate.resize(E);
    up.resize(E);
    down.resize(E);
    std::vector<const void*> dg(E, nullptr), du(E, nullptr), dd(E, nullptr);
    hgate_tbl.assign(E, nullptr);
    hup_tbl.assign(E, nullptr);
    hdown_tbl.assign(E, nullptr);
    const float rg = 1.0f / std::sqrt(static_cast<float>(c.hidden)),
                rd = 2.0f / std::sqrt(static_cast<float>(c.intermediate));
    for (size_t e = 0; e < E; ++e) {
      if (!usable(static_cast<int64_t>(e))) continue;
      gate[e] = cuda::testing::to_dtype(uniform(DI, -rg, rg, seed + 3 * e), c.dtype);
      up[e] = cuda::testing::to_dtype(uniform(DI, -rg, rg, seed + 3 * e + 1), c.dtype);
      down[e] = cuda::testing::to_dtype(uniform(DI, -rd, rd, seed + 3 * e + 2), c.dtype);
      hgate_tbl[e] = gate[e].bytes.data();
      hup_tbl[e] = up[e].bytes.data();
      hdown_tbl[e] = down[e].bytes.data();
      dgate.push_back(upload(gate[e].bytes));
      dup.push_back(upload(up[e].bytes));
      ddown.push_back(upload(down[e].bytes));
      dg[e] = dgate.back().data();
      du[e] = dup.back().data();
      dd[e] = ddown.back().data();
    }
    gate_tbl = upload(dg), up_tbl = upload(du), down_tbl = upload(dd);
  }

  // out = moe(x, ids, weights) by the CPU twin.
  std::vector<float> reference(const std::vector<float>& x, const std::vector<int32_t>& ids,
                               const std::vector<float>& w, int64_t n_tokens, int64_t top_k) const {
    std::vector<float> out(static_cast<size_t>(n_tokens * c.hidden));
    cpu::Context cpu_ctx;
    cpu::moe({.out = out.data(),
              .x = x.data(),
              .expert_ids = ids.data(),
              .expert_weights = w.data(),
              .gate = hgate_tbl.data(),
              .up = hup_tbl.data(),
              .down = hdown_tbl.data(),
              .weight_dtype = c.dtype,
              .n_tokens = n_tokens,
              .top_k = top_k,
              .n_experts = c.n_experts,
              .hidden = c.hidden,
              .intermediate = c.intermediate},
             cpu_ctx);
    return out;
  }

  MoeParams gpu_params(float* out, const float* x, const int32_t* ids, const float* w, int64_t n_tokens,
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
            .intermediate = c.intermediate};
  }
};

// Router-like ids: top_k distinct usable experts per token; only the first `pool` usable ones are ever
// chosen, so the rest are unused too.
std::vector<int32_t> random_ids(int64_t n_tokens, int64_t top_k, int64_t n_experts, uint64_t seed) {
  std::vector<int32_t> usable;
  for (int32_t e = 0; e < n_experts; ++e)
    if (Experts::usable(e)) usable.push_back(e);
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

// Runs one case through both backends and checks the result, the guard and (for prefill) that a
// second run gives identical bits.
void run_case(const Experts& ex, const std::vector<int32_t>& ids, int64_t n_tokens, int64_t top_k, uint64_t seed,
              cuda::Context& ctx) {
  const MoeCase& c = ex.c;
  SCOPED_TRACE(describe(c) + " top_k=" + std::to_string(top_k) + " seed=" + std::to_string(seed));
  const std::vector<float> x = uniform(static_cast<size_t>(n_tokens * c.hidden), -1.0f, 1.0f, seed + 11);
  const std::vector<float> w = uniform(ids.size(), 0.05f, 1.0f, seed + 12);
  const std::vector<float> want = ex.reference(x, ids, w, n_tokens, top_k);

  const auto dx = upload(x), dids = upload(ids), dw = upload(w);
  const auto dout = output_with_guard(want.size());  // NaN: out must be overwritten, not accumulated into
  const MoeParams p =
      ex.gpu_params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n_tokens, top_k);
  cuda::moe(p, ctx);
  const std::vector<float> got = download(dout);
  const double err = rel_error(got, want);
  EXPECT_LE(err, tolerance(c.dtype, n_tokens));
  EXPECT_EQ(first_bad_guard(got, want.size()), -1);

  cuda::moe(p, ctx);  // deterministic: no atomics, fixed summation order
  const std::vector<float> again = download(dout);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(want.size()), again.begin()))
      << "a second run changed the bits";
}

TEST(MoeCuda, MatchesCpuDecodeAndPrefill) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 1;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16}) {
    // (top_k, E, D, I): aligned rows and Mixtral-like top-2; odd sizes (16-bit rows not 16-byte
    // aligned, scalar tails) with DeepSeek/Qwen3-like top-8.
    for (const auto& [k, E, D, I] :
         std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{2, 16, 256, 96}, {8, 64, 130, 70}}) {
      const Experts ex({.dtype = dt, .n_tokens = 0, .top_k = k, .n_experts = E, .hidden = D, .intermediate = I},
                       seed * 7919);
      for (const int64_t n : {1, 2, 37, 300}) {
        run_case(ex, random_ids(n, k, E, seed), n, k, seed, ctx);
        ++seed;
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
  for (const DType dt : {DType::f32, DType::bf16}) {
    const Experts ex({.dtype = dt, .n_tokens = 0, .top_k = 4, .n_experts = 12, .hidden = 128, .intermediate = 64}, seed * 31);
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
  // One expert gets every pair (twice per token with top_k 2: duplicates are legal and must both count).
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 500;
  for (const DType dt : {DType::f32, DType::bf16}) {
    const Experts ex({.dtype = dt, .n_tokens = 0, .top_k = 2, .n_experts = 8, .hidden = 192, .intermediate = 64}, seed);
    for (const int64_t n : {1, 3, 50}) {
      run_case(ex, std::vector<int32_t>(static_cast<size_t>(n * 2), 5), n, 2, seed, ctx);
      run_case(ex, std::vector<int32_t>(static_cast<size_t>(n), 3), n, 1, seed + 1, ctx);
      seed += 2;
    }
  }
}

TEST(MoeCuda, DecodeReplaysWithNewIds) {
  // The decode path is captured once and replayed after the ids and x change on the device: the
  // replay must read them there (no host round trip baked into the graph).
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const MoeCase c{.dtype = DType::bf16, .n_tokens = 1, .top_k = 8, .n_experts = 64, .hidden = 256, .intermediate = 128};
  const Experts ex(c, 42);
  const int64_t n = 1;
  const auto dx = upload(uniform(static_cast<size_t>(c.hidden), -1.0f, 1.0f, 1));
  const auto dids = upload(random_ids(n, c.top_k, c.n_experts, 2));
  const auto dw = upload(uniform(static_cast<size_t>(c.top_k), 0.05f, 1.0f, 3));
  const auto dout = output_with_guard(static_cast<size_t>(c.hidden));
  const MoeParams p = ex.gpu_params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n, c.top_k);
  cuda::moe(p, ctx);  // sizes the workspace outside the capture
  ctx.synchronize();
  ctx.begin_capture();
  cuda::moe(p, ctx);
  ctx.end_capture();
  for (uint64_t step = 0; step < 3; ++step) {
    const std::vector<float> x = uniform(static_cast<size_t>(c.hidden), -1.0f, 1.0f, 100 + step);
    const std::vector<int32_t> ids = random_ids(n, c.top_k, c.n_experts, 200 + step);
    const std::vector<float> w = uniform(ids.size(), 0.05f, 1.0f, 300 + step);
    ASSERT_EQ(cudaMemcpy(dx.data(), x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dids.data(), ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dw.data(), w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    ctx.replay();
    ctx.synchronize();
    const std::vector<float> got = download(dout);
    EXPECT_LE(rel_error(got, ex.reference(x, ids, w, n, c.top_k)), kTolFp32) << "replay " << step;
  }
}

TEST(MoeCuda, BadIds) {
  // Prefill checks the ids on the host and throws; decode cannot report from the device, so a pair with
  // an out-of-range id contributes nothing (and reads no weights).
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const MoeCase c{.dtype = DType::f32, .n_tokens = 0, .top_k = 2, .n_experts = 6, .hidden = 64, .intermediate = 32};
  const Experts ex(c, 9);
  {
    const int64_t n = 10;
    std::vector<int32_t> ids = random_ids(n, 2, c.n_experts, 1);
    ids[7] = 6;
    const auto dx = upload(uniform(static_cast<size_t>(n * c.hidden), -1.0f, 1.0f, 2)), dids = upload(ids);
    const auto dw = upload(uniform(ids.size(), 0.1f, 1.0f, 3));
    const auto dout = output_with_guard(static_cast<size_t>(n * c.hidden));
    EXPECT_THROW(
        cuda::moe(ex.gpu_params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), n, 2), ctx),
        Error);
  }
  {
    const std::vector<float> x = uniform(static_cast<size_t>(c.hidden), -1.0f, 1.0f, 4);
    const std::vector<int32_t> ids = {3, 6};  // the second is out of range
    const std::vector<float> w = {0.7f, 0.3f};
    const auto dx = upload(x), dids = upload(ids), dw = upload(w);
    const auto dout = output_with_guard(static_cast<size_t>(c.hidden));
    cuda::moe(ex.gpu_params(dout.as<float>(), dx.as<float>(), dids.as<int32_t>(), dw.as<float>(), 1, 2), ctx);
    const std::vector<float> got = download(dout);
    EXPECT_LE(rel_error(got, ex.reference(x, {3}, {0.7f}, 1, 1)), kTolFp32);
  }
}

TEST(MoeCuda, RejectsUnsupportedParams) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const Experts ex({.dtype = DType::f32, .n_tokens = 0, .top_k = 1, .n_experts = 2, .hidden = 8, .intermediate = 8}, 1);
  const auto buf = output_with_guard(64);
  MoeParams p = ex.gpu_params(buf.as<float>(), buf.as<float>(), buf.as<int32_t>(), buf.as<float>(), 1, 1);
  p.weight_dtype = DType::f8_e4m3;
  EXPECT_THROW(cuda::moe(p, ctx), Error);
  p.weight_dtype = DType::f32;
  p.top_k = 0;
  EXPECT_THROW(cuda::moe(p, ctx), Error);
}

}  // namespace
}  // namespace moerun
