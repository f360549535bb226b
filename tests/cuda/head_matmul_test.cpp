// CUDA per-head matmul (MLA absorption) against its CPU twin: both forms, f32/bf16/f16 weights, DeepSeek-V3's
// shapes at decode (1 to 4 tokens: the GEMV kernels) and prefill (the tiled kernel), odd shapes that cannot
// use 16-byte weight loads, and padded token/head strides. Skips without a GPU.

#include <gtest/gtest.h>

#include <cstdint>
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

}  // namespace
}  // namespace moerun
