// CUDA matmul against its CPU twin: every weight dtype (f32, bf16, f16, FP8 e4m3 with block scales),
// the GEMV path (n <= 8) and the cuBLAS path (n > 8), awkward sizes (1, 31, 257, 4095), misaligned
// rows (odd-length 16-bit and FP8 rows), bias, row strides, determinism and graph capture. (Speed is
// bench/cuda_kernels_bench.cpp's business, never a test's.) Skips with a reason when no GPU can be used.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/ceilings.h"
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

// Tolerances (tests/support/op_tolerances.h: matmul against its CPU twin, and on the tensor-core
// path) are relative to s[t, o] = sum_i |x[t, i] * W[o, i]| + |bias[o]| (the size of the terms, so
// cancellation cannot make a small result fail). The reference multiplies exactly the numbers the GPU
// does (x rounded where the GPU rounds it, FP8 dequantized as the GPU does), so only the order of the
// fp32 additions differs.

constexpr int64_t kGemvMaxTokens = 8;  // matmul.cu's switch between GEMV and cuBLAS

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
    for (const int64_t n : {1, 2, 4, 8, 32})
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

}  // namespace
}  // namespace moerun
