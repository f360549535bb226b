// CUDA matmul against its CPU twin: every weight dtype (f32, bf16, f16, FP8 e4m3 with block scales),
// the GEMV path (n <= 8) and the cuBLAS path (n > 8, FP8 through dequantized bf16 tiles), awkward sizes
// (1, 31, 257, 4095), misaligned rows (odd-length 16-bit and FP8 rows), bias, row strides, determinism
// and graph capture; the small outputs the rows-per-block rule spreads (router, kv_a, q_a, a one-row
// gate at model sizes); matmul_group equal bit for bit to separate matmuls (and close to the CPU twin)
// whether its entries share a launch or fall back; the fused RMSNorm and residual add (every dtype and
// path, alone and grouped, captured); and the host arithmetic of kernels/cuda/gemm.h
// (rows per block, launch counts), which runs without a device. (Speed is
// bench/cuda_kernels_bench.cpp's business, never a test's.) Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/gemm.h"
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

// Tolerances (tests/support/op_tolerances.h: matmul against its CPU twin, and on the tensor-core
// path) are relative to s[t, o] = sum_i |x[t, i] * W[o, i]| + |bias[o]| (the size of the terms, so
// cancellation cannot make a small result fail). The reference multiplies exactly the numbers the GPU
// does (x rounded where the GPU rounds it, FP8 dequantized as the GPU does), so only the order of the
// fp32 additions differs.

constexpr int64_t kGemvMaxTokens = cuda::matmul_plan::kGemvMaxTokens;  // matmul.cu's switch to cuBLAS

struct Case {
  DType dtype;
  int64_t n, in, out;
  bool bias;
  int64_t x_pad, out_pad;                   // row stride = row length + pad (0: dense)
  int64_t block_out = 128, block_in = 128;  // FP8 only
};

std::string describe(const Case& c) {
  std::ostringstream os;
  os << dtype_name(c.dtype) << " n=" << c.n << " in=" << c.in << " out=" << c.out << " bias=" << c.bias
     << " x_pad=" << c.x_pad << " out_pad=" << c.out_pad;
  if (c.dtype == DType::f8_e4m3) os << " block=" << c.block_out << "x" << c.block_in;
  return os.str();
}

// f16 rounding of the GPU's __float2half_rn, subnormals included (the shared helper clamps tiny values).
float round_f16(float v) {
  if (std::fabs(v) < 6.103515625e-05f) return std::ldexp(std::nearbyint(std::ldexp(v, 24)), -24);
  return cpu::f16_to_f32(cuda::testing::f32_to_f16_bits(v));
}

float round_bf16(float v) { return cpu::bf16_to_f32(cpu::f32_to_bf16(v)); }

// A weight matrix as stored (bytes) and as the reference multiplies it (fp32 values).
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  std::vector<float> scale;  // FP8: [ceil(out / block_out), ceil(in / block_in)]
};

Weights make_weights(const Case& c, bool gemm_path, uint64_t seed) {
  const size_t count = static_cast<size_t>(c.out * c.in);
  Weights w;
  if (c.dtype != DType::f8_e4m3) {
    // 1/sqrt(in) keeps outputs O(1) so absolute and relative errors read alike.
    const float r = 1.0f / std::sqrt(static_cast<float>(c.in));
    auto hw = cuda::testing::to_dtype(uniform(count, -r, r, seed), c.dtype);
    w.bytes = std::move(hw.bytes);
    w.values = std::move(hw.values);
    return w;
  }
  const int64_t srows = (c.out + c.block_out - 1) / c.block_out, scols = (c.in + c.block_in - 1) / c.block_in;
  w.scale = uniform(static_cast<size_t>(srows * scols), 1e-3f, 4e-3f, seed + 7);  // FP8 spans +-448
  std::mt19937_64 rng(seed);
  w.bytes.resize(count);
  w.values.resize(count);
  for (size_t k = 0; k < count; ++k) {
    uint8_t b = 0;
    do b = static_cast<uint8_t>(rng() >> 56);
    while ((b & 0x7f) == 0 || (b & 0x7f) == 0x7f);  // never zero, never NaN
    w.bytes[k] = b;
    const int64_t o = static_cast<int64_t>(k) / c.in, i = static_cast<int64_t>(k) % c.in;
    const float v = cpu::f8_e4m3_to_f32(b) * w.scale[static_cast<size_t>((o / c.block_out) * scols + i / c.block_in)];
    w.values[k] = gemm_path ? round_bf16(v) : v;  // the GEMM path multiplies a bf16 dequantized tile
  }
  return w;
}

void run_case(const Case& c, uint64_t seed, cuda::Context& ctx) {
  SCOPED_TRACE(describe(c) + " seed=" + std::to_string(seed));
  const bool gemm_path = c.n > kGemvMaxTokens;
  const int64_t xs = c.in + c.x_pad, os = c.out + c.out_pad;
  const Weights w = make_weights(c, gemm_path, seed);
  const std::vector<float> x = uniform(static_cast<size_t>(c.n * xs), -1.0f, 1.0f, seed + 1);
  const std::vector<float> bias =
      c.bias ? uniform(static_cast<size_t>(c.out), -0.5f, 0.5f, seed + 2) : std::vector<float>{};

  // Reference: the CPU twin on fp32 weight values and x as the GPU multiplies it (rounded to the
  // GEMM's 16-bit type on the cuBLAS path), plus the same product on absolute values for the scale.
  std::vector<float> x_ref(x), x_abs(x.size()), w_abs(w.values.size()), b_abs(bias.size());
  if (gemm_path && c.dtype != DType::f32)
    for (float& v : x_ref) v = c.dtype == DType::f16 ? round_f16(v) : round_bf16(v);
  for (size_t i = 0; i < x.size(); ++i) x_abs[i] = std::fabs(x_ref[i]);
  for (size_t i = 0; i < w.values.size(); ++i) w_abs[i] = std::fabs(w.values[i]);
  for (size_t i = 0; i < bias.size(); ++i) b_abs[i] = std::fabs(bias[i]);
  std::vector<float> want(static_cast<size_t>(c.n * c.out)), scale(want.size());
  cpu::Context cpu_ctx;
  cpu::matmul({.out = want.data(),
               .x = x_ref.data(),
               .weight = w.values.data(),
               .weight_dtype = DType::f32,
               .bias = c.bias ? bias.data() : nullptr,
               .n = c.n,
               .in_features = c.in,
               .out_features = c.out,
               .x_stride = xs},
              cpu_ctx);
  cpu::matmul({.out = scale.data(),
               .x = x_abs.data(),
               .weight = w_abs.data(),
               .weight_dtype = DType::f32,
               .bias = c.bias ? b_abs.data() : nullptr,
               .n = c.n,
               .in_features = c.in,
               .out_features = c.out,
               .x_stride = xs},
              cpu_ctx);

  const auto dx = upload(x), dw = upload(w.bytes), db = upload(bias), ds = upload(w.scale);
  const auto dout = output_with_guard(static_cast<size_t>(c.n * os));  // NaN: unwritten entries show
  cuda::matmul({.out = dout.as<float>(),
                .x = dx.as<float>(),
                .weight = dw.data(),
                .weight_dtype = c.dtype,
                .bias = c.bias ? db.as<float>() : nullptr,
                .n = c.n,
                .in_features = c.in,
                .out_features = c.out,
                .x_stride = c.x_pad ? xs : 0,
                .out_stride = c.out_pad ? os : 0,
                .weight_scale = c.dtype == DType::f8_e4m3 ? ds.as<float>() : nullptr,
                .block_out = c.block_out,
                .block_in = c.block_in},
               ctx);
  const std::vector<float> got = download(dout);

  const testing::Tolerance tol = testing::tolerance(
      testing::Op::matmul, gemm_path && c.dtype != DType::f32 ? testing::Check::cuda_tensor : testing::Check::cuda,
      c.dtype);
  for (int64_t t = 0; t < c.n; ++t) {
    for (int64_t o = 0; o < os; ++o) {
      const float g = got[static_cast<size_t>(t * os + o)];
      if (o >= c.out) {
        ASSERT_TRUE(std::isnan(g)) << "padding written at t=" << t << " o=" << o;
        continue;
      }
      const size_t k = static_cast<size_t>(t * c.out + o);
      ASSERT_TRUE(std::isfinite(g)) << "t=" << t << " o=" << o;
      const double err = std::fabs(static_cast<double>(g) - want[k]);
      ASSERT_LE(err, tol.at(want[k], scale[k])) << "t=" << t << " o=" << o << " got " << g << " want " << want[k];
    }
  }
  EXPECT_EQ(first_bad_guard(got, static_cast<size_t>(c.n * os)), -1);
}

TEST(MatmulCuda, MatchesCpuEveryDtypeAndPath) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 31}, {31, 257}, {257, 3}, {4095, 33}, {2048, 130}};
  uint64_t seed = 1;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3}) {
    for (const int64_t n : {1, 3, 8, 17, 64, 300}) {
      for (const auto& [in, out] : shapes) {
        // Bias and out stride (dense / +3) take all four combinations over seed % 4; x strides cycle
        // dense / aligned (+4) / misaligned (+5), so every path meets every layout across the table.
        const Case c{.dtype = dt,
                     .n = n,
                     .in = in,
                     .out = out,
                     .bias = seed % 2 == 0,
                     .x_pad = (seed % 3 == 1)   ? 4
                              : (seed % 3 == 2) ? 5
                                                : 0,
                     .out_pad = (seed % 4 == 1 || seed % 4 == 2) ? 3 : 0};
        run_case(c, seed, ctx);
        ++seed;
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(MatmulCuda, Fp8ScaleBlocksOfOtherSizes) {
  // Block scales that do not line up with the GEMV's 16-byte vectors (block_in 24: scalar path) or that
  // cover few rows (block_out 3), on both paths.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 1000;
  for (const int64_t n : {1, 5, 40}) {
    for (const auto& [bo, bi] : std::vector<std::pair<int64_t, int64_t>>{{3, 24}, {128, 16}, {1, 300}, {64, 128}}) {
      run_case({.dtype = DType::f8_e4m3,
                .n = n,
                .in = 520,
                .out = 70,
                .bias = true,
                .x_pad = 0,
                .out_pad = 0,
                .block_out = bo,
                .block_in = bi},
               seed++, ctx);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(MatmulCuda, LargeVectorisedRows) {
  // Real model shapes, where every row is 16-byte aligned and the vector path does all the work.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 2000;
  for (const DType dt : {DType::bf16, DType::f8_e4m3})
    for (const int64_t n : {1, 2, 4, 8, 9, 32})  // 9: the first cuBLAS n (FP8: dequantized tiles)
      run_case({.dtype = dt, .n = n, .in = 7168, .out = 576, .bias = false, .x_pad = 0, .out_pad = 0}, seed++, ctx);
}

TEST(MatmulCuda, GemvIsDeterministicAndCapturable) {
  // The same call twice gives the same bits, and a captured-then-replayed call gives them too.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const int64_t n = 2, in = 3000, out = 515;
  const auto w = cuda::testing::to_dtype(uniform(static_cast<size_t>(in * out), -0.05f, 0.05f, 77), DType::bf16);
  const auto dx = upload(uniform(static_cast<size_t>(n * in), -1.0f, 1.0f, 78)), dw = upload(w.bytes);
  const auto a = output_with_guard(static_cast<size_t>(n * out)), b = output_with_guard(static_cast<size_t>(n * out));
  const MatmulParams p{.out = a.as<float>(),
                       .x = dx.as<float>(),
                       .weight = dw.data(),
                       .weight_dtype = DType::bf16,
                       .n = n,
                       .in_features = in,
                       .out_features = out};
  cuda::matmul(p, ctx);
  const std::vector<float> first = download(a);
  cuda::matmul(p, ctx);
  EXPECT_EQ(download(a), first);
  MatmulParams q = p;
  q.out = b.as<float>();
  ctx.begin_capture();
  cuda::matmul(q, ctx);
  ctx.end_capture();
  ctx.replay();
  ctx.synchronize();
  EXPECT_EQ(download(b), first);
}

TEST(MatmulCuda, GemmPathHonoursStridesInPlaceOfDenseRows) {
  // A strided x and out on the cuBLAS path (leading dimensions), compared to the dense call's output.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const int64_t n = 40, in = 96, out = 72, xs = 128, os = 100;
  const auto w = cuda::testing::to_dtype(uniform(static_cast<size_t>(in * out), -0.1f, 0.1f, 5), DType::bf16);
  const std::vector<float> xw = uniform(static_cast<size_t>(n * xs), -1.0f, 1.0f, 6);
  std::vector<float> xd(static_cast<size_t>(n * in));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < in; ++i) xd[static_cast<size_t>(t * in + i)] = xw[static_cast<size_t>(t * xs + i)];
  const auto dw = upload(w.bytes), dxw = upload(xw), dxd = upload(xd);
  const auto wide = output_with_guard(static_cast<size_t>(n * os)),
             dense = output_with_guard(static_cast<size_t>(n * out));
  cuda::matmul({.out = wide.as<float>(),
                .x = dxw.as<float>(),
                .weight = dw.data(),
                .weight_dtype = DType::bf16,
                .n = n,
                .in_features = in,
                .out_features = out,
                .x_stride = xs,
                .out_stride = os},
               ctx);
  cuda::matmul({.out = dense.as<float>(),
                .x = dxd.as<float>(),
                .weight = dw.data(),
                .weight_dtype = DType::bf16,
                .n = n,
                .in_features = in,
                .out_features = out},
               ctx);
  const std::vector<float> gw = download(wide), gd = download(dense);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o)
      ASSERT_EQ(gw[static_cast<size_t>(t * os + o)], gd[static_cast<size_t>(t * out + o)]) << "t=" << t << " o=" << o;
}

TEST(MatmulCuda, RejectsBadParams) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const auto buf = output_with_guard(64);
  const MatmulParams ok{
      .out = buf.as<float>(), .x = buf.as<float>(), .weight = buf.data(), .n = 1, .in_features = 4, .out_features = 4};
  MatmulParams p = ok;
  p.weight_dtype = DType::i32;
  EXPECT_THROW(cuda::matmul(p, ctx), Error);
  p = ok;
  p.weight_dtype = DType::f8_e4m3;  // no scales
  EXPECT_THROW(cuda::matmul(p, ctx), Error);
  p = ok;
  p.x_stride = 2;  // shorter than a row
  EXPECT_THROW(cuda::matmul(p, ctx), Error);
}

TEST(MatmulCuda, Ceilings) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const double copy = cuda::measure_copy_bandwidth_gbs(ctx), tflops = cuda::measure_gemm_tflops(ctx);
  std::printf("# copy bandwidth %.0f GB/s, bf16 GEMM %.0f TFLOP/s\n", copy, tflops);
  // The ceilings are measurements; here only that they are measurements (finite and positive).
  EXPECT_TRUE(std::isfinite(copy) && copy > 0.0);
  EXPECT_TRUE(std::isfinite(tflops) && tflops > 0.0);
}

// --- matmul_group (one GEMV launch per set of entries sharing x) and the small-output rule ---

// The reference check of run_case for one output [n, out] (dense): |got - want| within the
// tolerance of the magnitude s (the CPU matmul of |x|, |W| and |b|).
void expect_close_to_cpu(const std::vector<float>& got, const std::vector<float>& x, int64_t xs, const Weights& w,
                         const std::vector<float>& bias, int64_t n, int64_t in, int64_t out, DType dtype) {
  // The cuBLAS path multiplies x rounded to the GEMM's 16-bit type (make_weights rounded FP8 already).
  const bool tensor = n > kGemvMaxTokens && dtype != DType::f32;
  std::vector<float> xr(x);
  if (tensor)
    for (float& v : xr) v = dtype == DType::f16 ? round_f16(v) : round_bf16(v);
  std::vector<float> x_abs(x.size()), w_abs(w.values.size()), b_abs(bias.size());
  for (size_t i = 0; i < x.size(); ++i) x_abs[i] = std::fabs(xr[i]);
  for (size_t i = 0; i < w.values.size(); ++i) w_abs[i] = std::fabs(w.values[i]);
  for (size_t i = 0; i < bias.size(); ++i) b_abs[i] = std::fabs(bias[i]);
  std::vector<float> want(static_cast<size_t>(n * out)), mag(want.size());
  cpu::Context cpu_ctx;
  const MatmulParams base{.weight_dtype = DType::f32, .n = n, .in_features = in, .out_features = out, .x_stride = xs};
  MatmulParams p = base;
  p.out = want.data(), p.x = xr.data(), p.weight = w.values.data(), p.bias = bias.empty() ? nullptr : bias.data();
  cpu::matmul(p, cpu_ctx);
  p = base;
  p.out = mag.data(), p.x = x_abs.data(), p.weight = w_abs.data(), p.bias = bias.empty() ? nullptr : b_abs.data();
  cpu::matmul(p, cpu_ctx);
  const testing::Tolerance tol = testing::tolerance(
      testing::Op::matmul, tensor ? testing::Check::cuda_tensor : testing::Check::cuda, dtype);
  for (size_t k = 0; k < want.size(); ++k) {
    ASSERT_TRUE(std::isfinite(got[k])) << "k=" << k;
    ASSERT_LE(std::fabs(static_cast<double>(got[k]) - want[k]), tol.at(want[k], mag[k]))
        << "t=" << k / static_cast<size_t>(out) << " o=" << k % static_cast<size_t>(out) << " got " << got[k]
        << " want " << want[k];
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct GroupEntry {
  int64_t out;
  bool bias;
  bool own_x = false;  // reads a copy of x at another address: cannot share the launch
};

// Runs the entries as one cuda::matmul_group and as separate cuda::matmul calls: the outputs must be
// identical bits, and each close to the CPU twin. With `capture`, the group is also captured in a graph
// and replayed into fresh outputs, which must again be identical.
void run_group(DType dtype, int64_t n, int64_t in, const std::vector<GroupEntry>& entries, uint64_t seed,
               cuda::Context& ctx, bool capture = false) {
  std::ostringstream what;
  what << dtype_name(dtype) << " n=" << n << " in=" << in << " seed=" << seed << " entries:";
  for (const GroupEntry& e : entries) what << " " << e.out << (e.bias ? "+b" : "") << (e.own_x ? "(own x)" : "");
  SCOPED_TRACE(what.str());
  const size_t count = entries.size();
  const std::vector<float> x = uniform(static_cast<size_t>(n * in), -1.0f, 1.0f, seed);
  const auto dx = upload(x), dx_copy = upload(x);
  std::vector<Weights> w(count);
  std::vector<std::vector<float>> bias(count);
  std::vector<cuda::DeviceBuffer> dw, ds, db, separate, grouped, replayed;
  std::vector<MatmulParams> ps(count);
  for (size_t k = 0; k < count; ++k) {
    const GroupEntry& e = entries[k];
    const Case c{.dtype = dtype, .n = n, .in = in, .out = e.out, .bias = e.bias, .x_pad = 0, .out_pad = 0};
    w[k] = make_weights(c, /*gemm_path=*/n > kGemvMaxTokens, seed + 10 * (k + 1));
    if (e.bias) bias[k] = uniform(static_cast<size_t>(e.out), -0.5f, 0.5f, seed + 10 * (k + 1) + 3);
    dw.push_back(upload(w[k].bytes));
    ds.push_back(upload(w[k].scale));
    db.push_back(upload(bias[k]));
    separate.push_back(output_with_guard(static_cast<size_t>(n * e.out)));
    grouped.push_back(output_with_guard(static_cast<size_t>(n * e.out)));
    replayed.push_back(output_with_guard(static_cast<size_t>(n * e.out)));
    ps[k] = {.x = (e.own_x ? dx_copy : dx).as<float>(),
             .weight = dw[k].data(),
             .weight_dtype = dtype,
             .bias = e.bias ? db[k].as<float>() : nullptr,
             .n = n,
             .in_features = in,
             .out_features = e.out,
             .weight_scale = dtype == DType::f8_e4m3 ? ds[k].as<float>() : nullptr};
  }
  for (size_t k = 0; k < count; ++k) {
    MatmulParams p = ps[k];
    p.out = separate[k].as<float>();
    cuda::matmul(p, ctx);
  }
  std::vector<MatmulParams> gp = ps;
  for (size_t k = 0; k < count; ++k) gp[k].out = grouped[k].as<float>();
  cuda::matmul_group(gp.data(), count, ctx);
  if (capture) {
    for (size_t k = 0; k < count; ++k) gp[k].out = replayed[k].as<float>();
    ctx.begin_capture();
    cuda::matmul_group(gp.data(), count, ctx);
    ctx.end_capture();
    ctx.replay();
    ctx.synchronize();
  }
  for (size_t k = 0; k < count; ++k) {
    SCOPED_TRACE("entry " + std::to_string(k));
    const std::vector<float> a = download(separate[k]), b = download(grouped[k]);
    ASSERT_TRUE(same_bits(a, b)) << "group and separate matmul differ";
    if (capture) {
      ASSERT_TRUE(same_bits(a, download(replayed[k]))) << "replayed group differs";
    }
    EXPECT_EQ(first_bad_guard(b, static_cast<size_t>(n * entries[k].out)), -1);
    expect_close_to_cpu(b, x, in, w[k], bias[k], n, in, entries[k].out, dtype);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(MatmulCuda, GroupEqualsSeparateCallsBitForBit) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 3000;
  for (const DType dt : {DType::bf16, DType::f32, DType::f8_e4m3}) {
    for (const int64_t n : {int64_t{1}, kGemvMaxTokens}) {
      // q/k/v-like (GQA: 2048 / 256 / 256 rows over 1024; Qwen2's bias on all three)
      run_group(dt, n, 1024, {{2048, true}, {256, true}, {256, true}}, seed++, ctx);
      run_group(dt, n, 1024, {{2048, false}, {256, false}, {256, false}}, seed++, ctx);
      // q_a + kv_a-like (1536 + 576 over 7168 in DeepSeek-V3; smaller here), and gate + up
      run_group(dt, n, 896, {{384, false}, {144, false}}, seed++, ctx);
      run_group(dt, n, 512, {{1408, false}, {1408, true}}, seed++, ctx);
      // Entries whose rows do not fill their last block, in a group big enough for 4 rows per block
      // at n = 1 and 2 at n = 8 on a 132-SM H200 (1066 rows): no block may straddle two entries.
      run_group(dt, n, 512, {{1030, true}, {3, false}, {33, true}}, seed++, ctx);
      run_group(dt, n, 512, {{5, true}, {3, false}, {1, true}}, seed++, ctx);  // 1 row per block
      if (HasFatalFailure()) return;
    }
  }
}

TEST(MatmulCuda, GroupFallsBackWhereEntriesDiffer) {
  // Entries reading x at another address, a group over the GEMV limit, an odd-length bf16 row (the
  // scalar path for that whole matmul), FP8 entries of different block sizes: each still equals
  // its own matmul, and the group is capturable.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 4000;
  run_group(DType::bf16, 2, 512, {{64, false}, {64, true, true}, {32, false}}, seed++, ctx, /*capture=*/true);
  run_group(DType::f32, 1, 300, {{16, true, true}, {8, false}}, seed++, ctx);  // no two share x
  run_group(DType::bf16, 12, 256, {{64, true}, {40, false}}, seed++, ctx);      // cuBLAS path, entry by entry
  run_group(DType::f8_e4m3, 9, 256, {{64, true}, {40, false}}, seed++, ctx);    // FP8 GEMM path
  run_group(DType::bf16, 3, 257, {{70, true}, {33, false}}, seed++, ctx, true);  // odd rows: scalar path
  if (HasFatalFailure()) return;
  // Different FP8 block_in (fixed per launch) in one group: separate launches, same bits.
  const int64_t n = 1, in = 512, out = 40;
  const Case c16{.dtype = DType::f8_e4m3, .n = n, .in = in, .out = out, .bias = false, .x_pad = 0, .out_pad = 0,
                 .block_out = 16, .block_in = 16};
  Case c128 = c16;
  c128.block_out = 128, c128.block_in = 128;
  const Weights w16 = make_weights(c16, false, seed + 1), w128 = make_weights(c128, false, seed + 2);
  const std::vector<float> x = uniform(static_cast<size_t>(n * in), -1.0f, 1.0f, seed);
  const auto dx = upload(x), dw16 = upload(w16.bytes), ds16 = upload(w16.scale), dw128 = upload(w128.bytes),
             ds128 = upload(w128.scale);
  const auto a0 = output_with_guard(out), a1 = output_with_guard(out), b0 = output_with_guard(out),
             b1 = output_with_guard(out);
  MatmulParams ps[2] = {{.out = a0.as<float>(), .x = dx.as<float>(), .weight = dw16.data(),
                         .weight_dtype = DType::f8_e4m3, .n = n, .in_features = in, .out_features = out,
                         .weight_scale = ds16.as<float>(), .block_out = 16, .block_in = 16},
                        {.out = a1.as<float>(), .x = dx.as<float>(), .weight = dw128.data(),
                         .weight_dtype = DType::f8_e4m3, .n = n, .in_features = in, .out_features = out,
                         .weight_scale = ds128.as<float>()}};
  cuda::matmul(ps[0], ctx);
  cuda::matmul(ps[1], ctx);
  ps[0].out = b0.as<float>(), ps[1].out = b1.as<float>();
  cuda::matmul_group(ps, 2, ctx);
  EXPECT_TRUE(same_bits(download(a0), download(b0)));
  EXPECT_TRUE(same_bits(download(a1), download(b1)));
  expect_close_to_cpu(download(b0), x, in, w16, {}, n, in, out, DType::f8_e4m3);
  expect_close_to_cpu(download(b1), x, in, w128, {}, n, in, out, DType::f8_e4m3);
}

TEST(MatmulCuda, GroupRejectsBadParams) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const auto buf = output_with_guard(64);
  const MatmulParams ok{
      .out = buf.as<float>(), .x = buf.as<float>(), .weight = buf.data(), .n = 1, .in_features = 4, .out_features = 4};
  std::vector<MatmulParams> ps(33, ok);
  EXPECT_THROW(cuda::matmul_group(ps.data(), 33, ctx), Error);  // over kMatmulGroupMax
  ps[1].weight_dtype = DType::q8_0;
  EXPECT_THROW(cuda::matmul_group(ps.data(), 2, ctx), Error);
  EXPECT_THROW(cuda::matmul_group(nullptr, 1, ctx), Error);
  EXPECT_NO_THROW(cuda::matmul_group(nullptr, 0, ctx));
}

// --- the fusions: MatmulParams::norm_weight (RMSNorm of x on the way in) and accumulate (out += y) ---

struct FusedEntry {
  int64_t out;
  bool bias;
  int norm;         // 0: none, 1: norm A, 2: norm B (another weight and eps: its own launch)
  bool accumulate;
};

// Uploads `start` followed by the guard values: an accumulating output's initial contents.
cuda::DeviceBuffer output_starting_at(const std::vector<float>& start) {
  std::vector<float> host(start);
  host.resize(start.size() + cuda::testing::kGuardCount, cuda::testing::kGuard);
  return upload(host);
}

// The entries as separate cuda::matmul calls, as one cuda::matmul_group and as a captured-then-replayed
// group: identical bits all three ways (entries of a group that share x and the norm share one GEMV
// launch, the others fall back), and each close to the CPU twin: rms_norm of x (rounded to the GEMM's
// 16-bit type on the tensor-core path, as the GPU rounds its normalized x), the matmul of the weights'
// fp32 values, then the add into the starting output. The tolerance is the matmul's over the magnitude
// sum_i |x'_i w_i| + |b| (+ |out| with accumulate) plus the norm's (2e-5 relative on every x'_i, which
// moves the sum by at most 2e-5 times that magnitude).
void run_fused(DType dtype, int64_t n, int64_t in, const std::vector<FusedEntry>& entries, uint64_t seed,
               cuda::Context& ctx) {
  std::ostringstream what;
  what << dtype_name(dtype) << " n=" << n << " in=" << in << " seed=" << seed << " entries:";
  for (const FusedEntry& e : entries)
    what << " " << e.out << (e.bias ? "+b" : "") << (e.norm ? (e.norm == 1 ? "+normA" : "+normB") : "")
         << (e.accumulate ? "+acc" : "");
  SCOPED_TRACE(what.str());
  const bool gemm_path = n > kGemvMaxTokens, tensor = gemm_path && dtype != DType::f32;
  const size_t count = entries.size();
  // Rows of different magnitudes, so each token's inv_rms differs.
  std::vector<float> x = uniform(static_cast<size_t>(n * in), -1.0f, 1.0f, seed);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < in; ++i) x[static_cast<size_t>(t * in + i)] *= 0.25f + static_cast<float>(t % 5);
  const std::vector<float> norm_w[2] = {uniform(static_cast<size_t>(in), 0.5f, 1.5f, seed + 1),
                                        uniform(static_cast<size_t>(in), -1.2f, 1.2f, seed + 2)};
  const float norm_eps[2] = {1e-6f, 1e-3f};
  const auto dx = upload(x), dn0 = upload(norm_w[0]), dn1 = upload(norm_w[1]);
  const float* dnorm[2] = {dn0.as<float>(), dn1.as<float>()};

  // The normalized x of each norm as the CPU computes it (and as the GEMM path rounds it).
  std::vector<float> xn[3] = {x, x, x};
  cpu::Context cpu_ctx;
  for (int k = 0; k < 2; ++k)
    cpu::rms_norm({.out = xn[k + 1].data(), .x = x.data(), .weight = norm_w[k].data(), .rows = n, .cols = in,
                   .eps = norm_eps[k]},
                  cpu_ctx);
  if (tensor)
    for (auto& v : xn)
      for (float& f : v) f = dtype == DType::f16 ? round_f16(f) : round_bf16(f);

  std::vector<Weights> w(count);
  std::vector<std::vector<float>> bias(count), start(count);
  std::vector<cuda::DeviceBuffer> dw, ds, db, separate, grouped, replayed;
  std::vector<MatmulParams> ps(count);
  for (size_t k = 0; k < count; ++k) {
    const FusedEntry& e = entries[k];
    const Case c{.dtype = dtype, .n = n, .in = in, .out = e.out, .bias = e.bias, .x_pad = 0, .out_pad = 0};
    w[k] = make_weights(c, gemm_path, seed + 10 * (k + 1));
    if (e.bias) bias[k] = uniform(static_cast<size_t>(e.out), -0.5f, 0.5f, seed + 10 * (k + 1) + 3);
    // Without accumulate the output starts as NaN (an unwritten element shows).
    start[k] = e.accumulate ? uniform(static_cast<size_t>(n * e.out), -2.0f, 2.0f, seed + 10 * (k + 1) + 4)
                            : std::vector<float>(static_cast<size_t>(n * e.out), std::nanf(""));
    dw.push_back(upload(w[k].bytes));
    ds.push_back(upload(w[k].scale));
    db.push_back(upload(bias[k]));
    separate.push_back(output_starting_at(start[k]));
    grouped.push_back(output_starting_at(start[k]));
    replayed.push_back(output_starting_at(start[k]));
    ps[k] = {.x = dx.as<float>(),
             .weight = dw[k].data(),
             .weight_dtype = dtype,
             .bias = e.bias ? db[k].as<float>() : nullptr,
             .n = n,
             .in_features = in,
             .out_features = e.out,
             .weight_scale = dtype == DType::f8_e4m3 ? ds[k].as<float>() : nullptr,
             .norm_weight = e.norm ? dnorm[e.norm - 1] : nullptr,
             .norm_eps = e.norm ? norm_eps[e.norm - 1] : 0.0f,
             .accumulate = e.accumulate};
  }
  for (size_t k = 0; k < count; ++k) {
    MatmulParams p = ps[k];
    p.out = separate[k].as<float>();
    cuda::matmul(p, ctx);
  }
  std::vector<MatmulParams> gp = ps;
  for (size_t k = 0; k < count; ++k) gp[k].out = grouped[k].as<float>();
  cuda::matmul_group(gp.data(), count, ctx);
  for (size_t k = 0; k < count; ++k) gp[k].out = replayed[k].as<float>();
  ctx.begin_capture();
  cuda::matmul_group(gp.data(), count, ctx);
  ctx.end_capture();
  ctx.replay();
  ctx.synchronize();

  const testing::Tolerance tol = testing::tolerance(
      testing::Op::matmul, tensor ? testing::Check::cuda_tensor : testing::Check::cuda, dtype);
  constexpr double kNormRel = 2e-5;  // rms_norm's CUDA tolerance on O(1) values, relative here
  for (size_t k = 0; k < count; ++k) {
    SCOPED_TRACE("entry " + std::to_string(k));
    const FusedEntry& e = entries[k];
    const std::vector<float> a = download(separate[k]), b = download(grouped[k]);
    ASSERT_TRUE(same_bits(a, b)) << "group and separate matmul differ";
    ASSERT_TRUE(same_bits(a, download(replayed[k]))) << "replayed group differs";
    EXPECT_EQ(first_bad_guard(b, static_cast<size_t>(n * e.out)), -1);
    // The reference: the CPU twin over the normalized (and rounded) x, the fp32 weight values, and
    // the magnitude of the terms.
    const std::vector<float>& xr = xn[e.norm];
    std::vector<float> x_abs(xr.size()), w_abs(w[k].values.size()), b_abs(bias[k].size());
    for (size_t i = 0; i < xr.size(); ++i) x_abs[i] = std::fabs(xr[i]);
    for (size_t i = 0; i < w_abs.size(); ++i) w_abs[i] = std::fabs(w[k].values[i]);
    for (size_t i = 0; i < b_abs.size(); ++i) b_abs[i] = std::fabs(bias[k][i]);
    std::vector<float> want = e.accumulate ? start[k] : std::vector<float>(start[k].size(), 0.0f), mag(want.size());
    for (size_t i = 0; i < mag.size(); ++i) mag[i] = e.accumulate ? std::fabs(start[k][i]) : 0.0f;
    MatmulParams p{.weight_dtype = DType::f32, .n = n, .in_features = in, .out_features = e.out, .accumulate = true};
    p.out = want.data(), p.x = xr.data(), p.weight = w[k].values.data();
    p.bias = e.bias ? bias[k].data() : nullptr;
    cpu::matmul(p, cpu_ctx);
    p.out = mag.data(), p.x = x_abs.data(), p.weight = w_abs.data(), p.bias = e.bias ? b_abs.data() : nullptr;
    cpu::matmul(p, cpu_ctx);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(std::isfinite(b[i])) << "i=" << i;
      ASSERT_LE(std::fabs(static_cast<double>(b[i]) - want[i]), tol.at(want[i], mag[i]) + kNormRel * mag[i])
          << "t=" << i / static_cast<size_t>(e.out) << " o=" << i % static_cast<size_t>(e.out) << " got " << b[i]
          << " want " << want[i];
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(MatmulCuda, FusedNormAndAccumulateEveryDtypeAndPath) {
  // Every GEMV token width and both sides of the cuBLAS switch; alone (a group of one) and in groups
  // where norm-only, accumulate-only and both share x: the entries with norm A share one launch, the
  // others (no norm, norm B) run their own.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 7000;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16, DType::f8_e4m3}) {
    for (const int64_t n : {1, 2, 5, 8, 9, 64}) {
      // 520: 65 bf16 vectors on 64 threads (one thread loads a second vector), 130 f32 vectors on 96
      const int64_t in = dt == DType::f8_e4m3 ? 768 : 520;
      run_fused(dt, n, in, {{300, true, 1, false}}, seed++, ctx);
      run_fused(dt, n, in, {{300, false, 0, true}}, seed++, ctx);
      run_fused(dt, n, in, {{300, true, 1, true}}, seed++, ctx);
      // q_a + kv_a-like (norm, no bias), a residual-style entry, and a second norm
      run_fused(dt, n, in,
                {{384, false, 1, false}, {144, false, 1, true}, {257, true, 0, true}, {65, true, 1, true},
                 {33, false, 2, true}, {7, true, 2, false}},
                seed++, ctx);
      if (HasFatalFailure()) return;
    }
  }
  // An odd row length (the scalar path for every element, norm weight loads unaligned too) and a
  // DeepSeek-V3-wide row (7168, 8 warps of 2+ vectors each).
  run_fused(DType::bf16, 3, 1001, {{129, true, 1, true}, {64, false, 1, false}}, seed++, ctx);
  run_fused(DType::f8_e4m3, 1, 7168, {{1536, false, 1, false}, {576, false, 1, false}}, seed++, ctx);
  run_fused(DType::bf16, 1, 7168, {{1000, false, 1, false}}, seed++, ctx);
}

TEST(MatmulCuda, FusedNormOnGemmPathEqualsRmsNormThenMatmulBitForBit) {
  // The cuBLAS path normalizes x with rms_norm_kernel's own arithmetic, so for f32 (the normalized x
  // multiplied as is) and bf16 (the same fp32 values rounded) it is cuda::rms_norm then cuda::matmul.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const int64_t n = 16, in = 1000, out = 96;
  const auto dx = upload(uniform(static_cast<size_t>(n * in), -2.0f, 2.0f, 91));
  const auto dn = upload(uniform(static_cast<size_t>(in), 0.5f, 1.5f, 92));
  const auto xn = output_with_guard(static_cast<size_t>(n * in));
  cuda::rms_norm({.out = xn.as<float>(), .x = dx.as<float>(), .weight = dn.as<float>(), .rows = n, .cols = in, .eps = 1e-6f},
                 ctx);
  for (const DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const auto w = cuda::testing::to_dtype(uniform(static_cast<size_t>(in * out), -0.05f, 0.05f, 93), dt);
    const auto dw = upload(w.bytes);
    const auto a = output_with_guard(static_cast<size_t>(n * out)), b = output_with_guard(static_cast<size_t>(n * out));
    cuda::matmul({.out = a.as<float>(), .x = xn.as<float>(), .weight = dw.data(), .weight_dtype = dt, .n = n,
                  .in_features = in, .out_features = out},
                 ctx);
    cuda::matmul({.out = b.as<float>(), .x = dx.as<float>(), .weight = dw.data(), .weight_dtype = dt, .n = n,
                  .in_features = in, .out_features = out, .norm_weight = dn.as<float>(), .norm_eps = 1e-6f},
                 ctx);
    EXPECT_TRUE(same_bits(download(a), download(b)));
  }
}

TEST(MatmulCuda, FusedAccumulateRejectsOutOverlappingX) {
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  const auto buf = output_with_guard(64, 1.0f), w = output_with_guard(64, 1.0f);
  MatmulParams p{.out = buf.as<float>() + 2, .x = buf.as<float>(), .weight = w.data(), .n = 1, .in_features = 4,
                 .out_features = 4, .accumulate = true};
  EXPECT_THROW(cuda::matmul(p, ctx), Error);
  EXPECT_THROW(cuda::matmul_group(&p, 1, ctx), Error);
  p.out = buf.as<float>() + 4;  // right after x: fine
  EXPECT_NO_THROW(cuda::matmul(p, ctx));
}

TEST(MatmulPlan, RowsPerBlockFillTheChip) {
  // Host arithmetic only (no device needed): DeepSeek-V3 decode on an H200 (132 SMs).
  using cuda::matmul_plan::gemv_rows_per_block;
  constexpr int kSms = 132;
  EXPECT_EQ(gemv_rows_per_block(256, 1, kSms), 1);     // router: 256 blocks of 1 row (64 of 4 before)
  EXPECT_EQ(gemv_rows_per_block(576, 1, kSms), 2);     // kv_a: 288 blocks
  EXPECT_EQ(gemv_rows_per_block(1536, 1, kSms), 4);    // q_a: 384 blocks
  EXPECT_EQ(gemv_rows_per_block(1536 + 576, 1, kSms), 4);
  EXPECT_EQ(gemv_rows_per_block(129280, 1, kSms), 4);  // lm_head
  EXPECT_EQ(gemv_rows_per_block(1, 1, kSms), 1);       // Qwen2-MoE's shared-expert gate: one row
  EXPECT_EQ(gemv_rows_per_block(1536, 4, kSms), 2);    // n > 2 holds at most 2 rows
  EXPECT_EQ(gemv_rows_per_block(256, 8, kSms), 1);
  EXPECT_EQ(gemv_rows_per_block(528, 1, kSms), 2);     // exactly 2 blocks per SM at 2 rows
  EXPECT_EQ(gemv_rows_per_block(526, 1, kSms), 1);     // 263 blocks at 2 rows: one short
  EXPECT_EQ(gemv_rows_per_block(1056, 2, kSms), 4);
  EXPECT_EQ(gemv_rows_per_block(1000, 1, 0), 4);       // an unknown SM count counts as 1
}

TEST(MatmulPlan, LaunchCounts) {
  using cuda::matmul_plan::matmul_launches;
  EXPECT_EQ(matmul_launches(0, 7168, 576, DType::bf16, true), 0);
  EXPECT_EQ(matmul_launches(1, 7168, 576, DType::bf16, true), 1);  // GEMV, bias fused
  EXPECT_EQ(matmul_launches(8, 7168, 576, DType::f8_e4m3, false), 1);
  EXPECT_EQ(matmul_launches(9, 7168, 576, DType::f32, false), 1);   // cuBLAS only
  EXPECT_EQ(matmul_launches(9, 7168, 576, DType::f32, true), 2);
  EXPECT_EQ(matmul_launches(64, 7168, 576, DType::bf16, false), 2);  // round x + GEMM
  EXPECT_EQ(matmul_launches(64, 7168, 576, DType::f8_e4m3, true), 4);  // round, dequant, GEMM, bias
  // lm_head-sized FP8: 129280 rows x 7168 in 64 MB bf16 tiles of 4681 rows: 28 tiles
  EXPECT_EQ(matmul_launches(64, 7168, 129280, DType::f8_e4m3, false), 1 + 2 * 28);
  // Fused norm: nothing more on the GEMV path or where x is rounded anyway; f32 GEMM normalizes first.
  EXPECT_EQ(matmul_launches(1, 7168, 1536, DType::f8_e4m3, false, true), 1);
  EXPECT_EQ(matmul_launches(8, 7168, 129280, DType::bf16, false, true), 1);
  EXPECT_EQ(matmul_launches(9, 7168, 576, DType::f32, false, true), 2);
  EXPECT_EQ(matmul_launches(64, 7168, 576, DType::bf16, true, true), 3);
  EXPECT_EQ(matmul_launches(64, 7168, 576, DType::f8_e4m3, false, true), 3);
}

TEST(MatmulCuda, SmallOutputsAtModelShapes) {
  // The outputs the rows-per-block rule spreads thin: router 256 x 7168, kv_a 576 x 7168, q_a
  // 1536 x 7168 (DeepSeek-V3) and a one-row shared-expert gate (Qwen2-MoE, 1 x 3584), every
  // GEMV token width, against the CPU twin.
  if (!cuda::available()) GTEST_SKIP() << kNoDevice;
  cuda::Context ctx;
  uint64_t seed = 5000;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{7168, 256}, {7168, 576}, {7168, 1536}, {3584, 1}};
  for (const DType dt : {DType::bf16, DType::f32, DType::f8_e4m3})
    for (const auto& [in, out] : shapes)
      for (const int64_t n : {1, 2, 4, 8}) {
        run_case({.dtype = dt, .n = n, .in = in, .out = out, .bias = out == 1, .x_pad = 0, .out_pad = 0}, seed++,
                 ctx);
        if (HasFatalFailure()) return;
      }
}

}  // namespace
}  // namespace moerun
