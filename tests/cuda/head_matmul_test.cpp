// CUDA per-head matmul (MLA absorption) against its CPU twin: both forms, f32/bf16/f16 and FP8 (e4m3 with
// block scales) weights, DeepSeek-V3's shapes at decode (1 to 4 tokens: the GEMV kernels) and prefill (the
// tiled kernel), odd shapes that cannot use 16-byte weight loads, scale blocks that do not line up with a
// head's rows or with 16-byte vectors, and padded token/head strides. Skips without a GPU.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

// Per weight dtype (tests/support/op_tolerances.h). The bf16/f16 weights are built exactly representable
// and both backends widen them exactly, so every dtype leaves only the fp32 summation order.
float tolerance(DType dtype) {
  return static_cast<float>(testing::tolerance(testing::Op::head_matmul, testing::Check::cuda, dtype).abs);
}

struct HeadCase {
  int64_t n_tokens, n_heads, in_dim, out_dim, head_rows, row_offset, row_len;
  bool transposed;
  int64_t x_pad, out_pad;  // extra floats per token in x and out (strided layouts)
};

void check_head_matmul(const HeadCase& c, DType dtype, uint64_t seed) {
  const int64_t weight_rows = c.n_heads * c.head_rows;
  const HostWeights w = to_dtype(uniform(static_cast<size_t>(weight_rows * c.row_len), -1.0f, 1.0f, seed), dtype);
  const int64_t x_head_stride = c.in_dim, x_token_stride = c.n_heads * c.in_dim + c.x_pad;
  const int64_t out_head_stride = c.out_dim, out_token_stride = c.n_heads * c.out_dim + c.out_pad;
  const auto x = uniform(static_cast<size_t>(c.n_tokens * x_token_stride), -1.0f, 1.0f, seed + 1);
  const size_t out_size = static_cast<size_t>(c.n_tokens * out_token_stride);
  const auto out0 = uniform(out_size, -1.0f, 1.0f, seed + 2);  // padding between tokens must survive

  const HeadMatmulParams base{.weight_dtype = dtype,
                              .n_tokens = c.n_tokens,
                              .n_heads = c.n_heads,
                              .in_dim = c.in_dim,
                              .out_dim = c.out_dim,
                              .head_rows = c.head_rows,
                              .row_offset = c.row_offset,
                              .row_len = c.row_len,
                              .x_token_stride = x_token_stride,
                              .x_head_stride = x_head_stride,
                              .out_token_stride = out_token_stride,
                              .out_head_stride = out_head_stride,
                              .transposed = c.transposed};
  std::vector<float> want = out0;
  HeadMatmulParams cp = base;
  cp.out = want.data(), cp.x = x.data(), cp.weight = w.bytes.data();
  cpu::Context cpu_ctx;
  cpu::head_matmul(cp, cpu_ctx);

  std::vector<float> dev_out = out0;
  dev_out.resize(out_size + kGuardCount, kGuard);
  DeviceBuffer dout = upload(dev_out), dx = upload(x), dw = upload(w.bytes);
  cuda::Context ctx;
  HeadMatmulParams gp = base;
  gp.out = dout.as<float>(), gp.x = dx.as<float>(), gp.weight = dw.data();
  cuda::head_matmul(gp, ctx);
  const auto got = download(dout);

  EXPECT_LE(max_abs_diff(got, want), tolerance(dtype))
      << dtype_name(dtype) << (c.transposed ? " transposed" : " plain") << " tokens=" << c.n_tokens
      << " heads=" << c.n_heads << " in=" << c.in_dim << " out=" << c.out_dim << " head_rows=" << c.head_rows
      << " offset=" << c.row_offset << " seed=" << seed;
  EXPECT_EQ(first_bad_guard(got, out_size), -1) << dtype_name(dtype);
}

TEST(HeadMatmulCuda, DeepSeekV3AbsorptionShapes) {
  MOERUN_SKIP_WITHOUT_CUDA();
  // kv_b_proj [128 * (128 + 128), 512]: q absorption reads rows 0..127 of each head transposed; the output
  // projection reads rows 128..255 (v_head_dim 128) plainly.
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (int64_t n_tokens : {1, 2, 4, 5, 67}) {
      check_head_matmul({n_tokens, 128, 128, 512, 256, 0, 512, true, 0, 0}, dtype, seed++);
      check_head_matmul({n_tokens, 128, 512, 128, 256, 128, 512, false, 0, 0}, dtype, seed++);
    }
}

TEST(HeadMatmulCuda, OddShapesAndStrides) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const std::vector<HeadCase> cases = {
      {1, 1, 1, 1, 1, 0, 1, true, 0, 0},  // smallest
      {1, 1, 1, 1, 1, 0, 1, false, 0, 0},
      {3, 3, 7, 13, 25, 3, 13, true, 5, 2},  // odd everything: no 16-byte loads, tiled kernel
      {3, 3, 13, 7, 25, 3, 13, false, 5, 2},
      {1, 16, 128, 512, 256, 0, 512, true, 3, 1},  // V2-Lite heads, strided x and out, GEMV kernels
      {4, 16, 512, 128, 256, 128, 512, false, 3, 1},
      {2, 5, 40, 20, 70, 30, 20, true, 0, 0},  // row_len 20: 16-byte loads for f32 only, dtype picks the path
      {2, 5, 20, 40, 70, 30, 20, false, 0, 0},
      {130, 2, 64, 96, 160, 64, 96, true, 1, 0},  // several token tiles
      {130, 2, 96, 64, 160, 64, 96, false, 1, 0},
  };
  uint64_t seed = 500;
  for (const HeadCase& c : cases)
    for (DType dtype : {DType::f32, DType::bf16, DType::f16}) check_head_matmul(c, dtype, seed++);
}


// FP8: the CPU twin on the same bytes and scales is the reference; the tolerance is relative to the element's
// magnitude M = sum_i |w_i x_i| (the CPU twin on |dequantized W| and |x|), as matmul's FP8 rows: both sides
// round one product per term (x times the scale, or the weight times it) and sum in another order.
constexpr double kFp8Mag = 2e-5;

void check_head_matmul_fp8(const HeadCase& c, int64_t block_out, int64_t block_in, uint64_t seed) {
  std::ostringstream what;
  what << (c.transposed ? "transposed" : "plain") << " tokens=" << c.n_tokens << " heads=" << c.n_heads
       << " in=" << c.in_dim << " out=" << c.out_dim << " head_rows=" << c.head_rows << " offset=" << c.row_offset
       << " block=" << block_out << "x" << block_in << " seed=" << seed;
  SCOPED_TRACE(what.str());
  const int64_t weight_rows = c.n_heads * c.head_rows;
  const size_t count = static_cast<size_t>(weight_rows * c.row_len);
  const int64_t srows = (weight_rows + block_out - 1) / block_out, scols = (c.row_len + block_in - 1) / block_in;
  const std::vector<float> scale = uniform(static_cast<size_t>(srows * scols), 1e-3f, 4e-3f, seed + 3);
  std::vector<uint8_t> bytes(count);
  std::vector<float> w_abs(count);
  std::mt19937_64 rng(seed);
  for (size_t k = 0; k < count; ++k) {
    uint8_t b = 0;
    do b = static_cast<uint8_t>(rng() >> 56);
    while ((b & 0x7f) == 0 || (b & 0x7f) == 0x7f);  // never zero, never NaN
    bytes[k] = b;
    const int64_t row = static_cast<int64_t>(k) / c.row_len, col = static_cast<int64_t>(k) % c.row_len;
    const float sc = scale[static_cast<size_t>((row / block_out) * scols + col / block_in)];
    w_abs[k] = std::fabs(cpu::f8_e4m3_to_f32(b) * sc);
  }
  const int64_t x_head_stride = c.in_dim, x_token_stride = c.n_heads * c.in_dim + c.x_pad;
  const int64_t out_head_stride = c.out_dim, out_token_stride = c.n_heads * c.out_dim + c.out_pad;
  const auto x = uniform(static_cast<size_t>(c.n_tokens * x_token_stride), -1.0f, 1.0f, seed + 1);
  std::vector<float> x_abs(x.size());
  for (size_t i = 0; i < x.size(); ++i) x_abs[i] = std::fabs(x[i]);
  const size_t out_size = static_cast<size_t>(c.n_tokens * out_token_stride);
  const auto out0 = uniform(out_size, -1.0f, 1.0f, seed + 2);  // padding between tokens must survive

  const HeadMatmulParams base{.weight_dtype = DType::f8_e4m3,
                              .n_tokens = c.n_tokens,
                              .n_heads = c.n_heads,
                              .in_dim = c.in_dim,
                              .out_dim = c.out_dim,
                              .head_rows = c.head_rows,
                              .row_offset = c.row_offset,
                              .row_len = c.row_len,
                              .x_token_stride = x_token_stride,
                              .x_head_stride = x_head_stride,
                              .out_token_stride = out_token_stride,
                              .out_head_stride = out_head_stride,
                              .transposed = c.transposed,
                              .block_out = block_out,
                              .block_in = block_in};
  cpu::Context cpu_ctx;
  std::vector<float> want = out0, mag(out_size, 0.0f);
  HeadMatmulParams cp = base;
  cp.out = want.data(), cp.x = x.data(), cp.weight = bytes.data(), cp.weight_scale = scale.data();
  cpu::head_matmul(cp, cpu_ctx);
  cp = base;
  cp.weight_dtype = DType::f32;
  cp.out = mag.data(), cp.x = x_abs.data(), cp.weight = w_abs.data(), cp.weight_scale = nullptr;
  cpu::head_matmul(cp, cpu_ctx);

  std::vector<float> dev_out = out0;
  dev_out.resize(out_size + kGuardCount, kGuard);
  DeviceBuffer dout = upload(dev_out), dx = upload(x), dw = upload(bytes), ds = upload(scale);
  cuda::Context ctx;
  HeadMatmulParams gp = base;
  gp.out = dout.as<float>(), gp.x = dx.as<float>(), gp.weight = dw.data(), gp.weight_scale = ds.as<float>();
  cuda::head_matmul(gp, ctx);
  const auto got = download(dout);
  for (size_t k = 0; k < out_size; ++k) {
    ASSERT_TRUE(std::isfinite(got[k])) << "k=" << k;
    ASSERT_LE(std::fabs(static_cast<double>(got[k]) - want[k]), 1e-30 + kFp8Mag * mag[k])
        << "k=" << k << " got " << got[k] << " want " << want[k] << " magnitude " << mag[k];
  }
  EXPECT_EQ(first_bad_guard(got, out_size), -1);
}

TEST(HeadMatmulCuda, Fp8DeepSeekV3AbsorptionShapes) {
  MOERUN_SKIP_WITHOUT_CUDA();
  // kv_b_proj of DeepSeek-V3 is FP8 [128 * 256, 512] with 128 x 128 scale blocks: the q absorption
  // (transposed, qk_nope 128 -> kv_lora_rank 512) and the output projection (plain, 512 -> v_head 128).
  uint64_t seed = 700;
  for (int64_t n_tokens : {1, 2, 4, 5, 67}) {
    check_head_matmul_fp8({n_tokens, 128, 128, 512, 256, 0, 512, true, 0, 0}, 128, 128, seed++);
    check_head_matmul_fp8({n_tokens, 128, 512, 128, 256, 128, 512, false, 0, 0}, 128, 128, seed++);
    if (HasFatalFailure()) return;
  }
}

TEST(HeadMatmulCuda, Fp8ScaleBlocksThatDoNotLineUp) {
  MOERUN_SKIP_WITHOUT_CUDA();
  // Heads whose rows start inside a scale block (head_rows 70, offset 30, block_out 64 / 3), blocks
  // narrower than a 16-byte vector or not a multiple of 16 (block_in 24, 8: the tiled kernel at any
  // token count), strided x and out.
  uint64_t seed = 800;
  const std::vector<std::pair<int64_t, int64_t>> blocks = {{64, 16}, {3, 24}, {128, 8}, {1, 512}};
  for (const auto& [bo, bi] : blocks)
    for (int64_t n_tokens : {1, 3, 70}) {
      check_head_matmul_fp8({n_tokens, 5, 40, 64, 70, 30, 64, true, 3, 1}, bo, bi, seed++);
      check_head_matmul_fp8({n_tokens, 5, 64, 40, 70, 30, 64, false, 3, 1}, bo, bi, seed++);
      if (HasFatalFailure()) return;
    }
  // Not 16-byte aligned rows (row_len 20): the tiled kernel.
  check_head_matmul_fp8({2, 3, 13, 20, 40, 7, 20, true, 0, 0}, 16, 16, seed++);
  check_head_matmul_fp8({2, 3, 20, 13, 40, 7, 20, false, 0, 0}, 16, 16, seed++);
}

TEST(HeadMatmulCuda, Fp8NeedsScales) {
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  DeviceBuffer buf = upload(std::vector<float>(64, 1.0f));
  HeadMatmulParams p{.out = buf.as<float>(),
                     .x = buf.as<float>(),
                     .weight = buf.data(),
                     .weight_dtype = DType::f8_e4m3,
                     .n_tokens = 1,
                     .n_heads = 1,
                     .in_dim = 4,
                     .out_dim = 4,
                     .head_rows = 4,
                     .row_len = 4,
                     .x_token_stride = 4,
                     .x_head_stride = 4,
                     .out_token_stride = 4,
                     .out_head_stride = 4};
  EXPECT_THROW(cuda::head_matmul(p, ctx), Error);  // no weight_scale
  p.weight_scale = buf.as<float>();
  p.block_in = 0;
  EXPECT_THROW(cuda::head_matmul(p, ctx), Error);
}

}  // namespace
}  // namespace moerun
