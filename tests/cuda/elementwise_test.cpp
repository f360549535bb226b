// CUDA elementwise and data-movement ops against their CPU twins: gated_act (every hidden_act, and
// inside cuda::moe's decode and prefill paths), embed (f32, bf16, f16 tables),
// add (plain and sigmoid-gated), clamp, store_rows (f32, and bf16 / f16 caches bit for bit; with the fused
// RoPE bit for bit against rope then store_rows on the GPU, and within rope's tolerance of the CPU) and copy. Sizes are odd and even, and pointers are offset
// by one float so both the 16-byte and the one-element paths run. Skips without a GPU.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;
using ::moerun::testing::Check;
using ::moerun::testing::Op;
using ::moerun::testing::tolerance;

// The largest difference the op's row of tests/support/op_tolerances.h allows (rows without a relative
// part: the outputs here are O(1) or exact).
float max_diff(Op op, DType dtype = DType::f32) { return static_cast<float>(tolerance(op, Check::cuda, dtype).abs); }

TEST(ElementwiseCuda, GatedActMatchesCpuEveryActivation) {
  MOERUN_SKIP_WITHOUT_CUDA();
  for (Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
    for (int64_t n : {1, 3, 31, 4096, 14343}) {
      for (int64_t offset : {0, 1}) {  // 1: no operand is 16-byte aligned, the scalar path runs
        const uint64_t seed = static_cast<uint64_t>(n * 2 + offset);
        auto gate = uniform(static_cast<size_t>(n + offset), -20.0f, 20.0f, seed);
        auto up = uniform(static_cast<size_t>(n + offset), -1.0f, 1.0f, seed + 1);
        std::vector<float> want(static_cast<size_t>(n));
        cpu::Context cpu_ctx;
        cpu::gated_act({.out = want.data(), .gate = gate.data() + offset, .up = up.data() + offset, .n = n, .act = act},
                       cpu_ctx);

        DeviceBuffer dg = upload(gate), du = upload(up), dout = output_with_guard(static_cast<size_t>(n + offset));
        cuda::Context ctx;
        cuda::gated_act({.out = dout.as<float>() + offset, .gate = dg.as<float>() + offset, .up = du.as<float>() + offset,
                         .n = n, .act = act},
                        ctx);
        const auto got_all = download(dout);
        const std::vector<float> got(got_all.begin() + offset, got_all.begin() + offset + n);
        EXPECT_LE(max_abs_diff(got, want), max_diff(Op::gated_act))
            << to_string(act) << " n=" << n << " offset=" << offset << " seed=" << seed;
        EXPECT_EQ(first_bad_guard(got_all, static_cast<size_t>(n + offset)), -1) << "n=" << n;

        // In place: out == gate.
        cuda::gated_act({.out = dg.as<float>() + offset, .gate = dg.as<float>() + offset, .up = du.as<float>() + offset,
                         .n = n, .act = act},
                        ctx);
        const auto inplace_all = download(dg);
        const std::vector<float> inplace(inplace_all.begin() + offset, inplace_all.end());
        EXPECT_LE(max_abs_diff(inplace, want), max_diff(Op::gated_act)) << "in place, " << to_string(act) << " n=" << n;
      }
    }
  }
}

// cuda::moe applies MoeParams::act in its decode kernel (gate and up in one GEMV pass) and in its
// prefill path (grouped GEMMs, then one activation kernel): both against cpu::moe. f32 experts, so
// only summation order and the transcendental differ.
TEST(ElementwiseCuda, MoeAppliesTheActivationOnBothPaths) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const int64_t D = 64, I = 24, E = 6, K = 2;
  std::vector<std::vector<float>> w;
  for (int64_t m = 0; m < 3 * E; ++m) {
    w.push_back(uniform(static_cast<size_t>(D * I), -0.3f, 0.3f, 3000 + static_cast<uint64_t>(m)));
  }
  std::vector<const void*> gate_h, up_h, down_h;
  for (int64_t e = 0; e < E; ++e) {
    gate_h.push_back(w[static_cast<size_t>(3 * e)].data());
    up_h.push_back(w[static_cast<size_t>(3 * e + 1)].data());
    down_h.push_back(w[static_cast<size_t>(3 * e + 2)].data());
  }
  std::vector<DeviceBuffer> dw;
  for (const auto& v : w) dw.push_back(upload(v));
  std::vector<const void*> gate_d, up_d, down_d;
  for (int64_t e = 0; e < E; ++e) {
    gate_d.push_back(dw[static_cast<size_t>(3 * e)].as<float>());
    up_d.push_back(dw[static_cast<size_t>(3 * e + 1)].as<float>());
    down_d.push_back(dw[static_cast<size_t>(3 * e + 2)].as<float>());
  }
  DeviceBuffer dgate = upload(gate_d), dup = upload(up_d), ddown = upload(down_d);
  // The moe row's budget for an output scale of 2: outputs here stay below 2 (|x| <= 1, weights <= 0.3).
  const auto tol = static_cast<float>(tolerance(Op::moe, Check::cuda).at(0.0, 2.0));
  for (int64_t n : {1, 9}) {  // decode (<= 4 tokens) and prefill
    const auto x = uniform(static_cast<size_t>(n * D), -1.0f, 1.0f, 3100 + static_cast<uint64_t>(n));
    std::vector<int32_t> ids;
    for (int64_t p = 0; p < n * K; ++p) ids.push_back(static_cast<int32_t>((5 * p + 2) % E));
    const auto wts = uniform(static_cast<size_t>(n * K), 0.1f, 1.0f, 3200);
    DeviceBuffer dx = upload(x), dids = upload(ids), dwts = upload(wts), dout = output_with_guard(static_cast<size_t>(n * D));
    for (Activation act : {Activation::silu, Activation::gelu, Activation::gelu_tanh}) {
      std::vector<float> want(static_cast<size_t>(n * D));
      cpu::Context cpu_ctx;
      cpu::moe({.out = want.data(), .x = x.data(), .expert_ids = ids.data(), .expert_weights = wts.data(),
                .gate = gate_h.data(), .up = up_h.data(), .down = down_h.data(), .weight_dtype = DType::f32,
                .n_tokens = n, .top_k = K, .n_experts = E, .hidden = D, .intermediate = I, .act = act},
               cpu_ctx);
      cuda::Context ctx;
      cuda::moe({.out = dout.as<float>(), .x = dx.as<float>(), .expert_ids = dids.as<int32_t>(),
                 .expert_weights = dwts.as<float>(), .gate = dgate.as<const void* const>(),
                 .up = dup.as<const void* const>(), .down = ddown.as<const void* const>(),
                 .weight_dtype = DType::f32, .n_tokens = n, .top_k = K, .n_experts = E, .hidden = D, .intermediate = I,
                 .act = act},
                ctx);
      const auto got_all = download(dout);
      const std::vector<float> got(got_all.begin(), got_all.begin() + n * D);
      EXPECT_LE(max_abs_diff(got, want), tol) << to_string(act) << " n=" << n;
      EXPECT_EQ(first_bad_guard(got_all, static_cast<size_t>(n * D)), -1) << to_string(act) << " n=" << n;
    }
  }
}

TEST(ElementwiseCuda, EmbedMatchesCpuEveryDtype) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const int64_t vocab = 37;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (int64_t dim : {1, 7, 64, 4101, 7168}) {
      const uint64_t seed = static_cast<uint64_t>(dim) * 3 + static_cast<uint64_t>(dtype);
      const HostWeights table = to_dtype(uniform(static_cast<size_t>(vocab * dim), -2.0f, 2.0f, seed), dtype);
      const std::vector<int32_t> ids = {0, 36, 5, 5, 17};  // first, last, a repeat
      const auto n_tokens = static_cast<int64_t>(ids.size());
      std::vector<float> want(static_cast<size_t>(n_tokens * dim));
      cpu::Context cpu_ctx;
      cpu::embed({.out = want.data(),
                  .table = table.bytes.data(),
                  .dtype = dtype,
                  .ids = ids.data(),
                  .n_tokens = n_tokens,
                  .dim = dim},
                 cpu_ctx);

      DeviceBuffer dt = upload(table.bytes), di = upload(ids), dout = output_with_guard(want.size());
      cuda::Context ctx;
      cuda::embed({.out = dout.as<float>(),
                   .table = dt.data(),
                   .dtype = dtype,
                   .ids = di.as<int32_t>(),
                   .n_tokens = n_tokens,
                   .dim = dim},
                  ctx);
      const auto got = download(dout);
      EXPECT_LE(max_abs_diff(got, want), max_diff(Op::embed, dtype)) << dtype_name(dtype) << " dim=" << dim;
      EXPECT_EQ(first_bad_guard(got, want.size()), -1) << dtype_name(dtype) << " dim=" << dim;
    }
  }
}

// A rank's share of a vocabulary-split table: its rows looked up, zeros for other ids, as the CPU twin.
TEST(ElementwiseCuda, EmbedVocabularyShareMatchesCpu) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const int64_t first = 10, rows = 12;  // of a 37-row vocabulary
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t dim : {7, 64}) {
      const HostWeights table = to_dtype(uniform(static_cast<size_t>(rows * dim), -2.0f, 2.0f, 900 + static_cast<uint64_t>(dim)), dtype);
      const std::vector<int32_t> ids = {0, 10, 21, 22, 36, 15};  // below, first, last, past, far past, inside
      const auto n_tokens = static_cast<int64_t>(ids.size());
      std::vector<float> want(static_cast<size_t>(n_tokens * dim));
      cpu::Context cpu_ctx;
      const EmbedParams host{.out = want.data(), .table = table.bytes.data(), .dtype = dtype, .ids = ids.data(), .n_tokens = n_tokens,
                             .dim = dim, .first_row = first, .rows = rows};
      cpu::embed(host, cpu_ctx);
      DeviceBuffer dt = upload(table.bytes), di = upload(ids), dout = output_with_guard(want.size());
      cuda::Context ctx;
      EmbedParams dev = host;
      dev.out = dout.as<float>();
      dev.table = dt.data();
      dev.ids = di.as<int32_t>();
      cuda::embed(dev, ctx);
      const auto got = download(dout);
      EXPECT_LE(max_abs_diff(got, want), max_diff(Op::embed, dtype)) << dtype_name(dtype) << " dim=" << dim;
      EXPECT_EQ(first_bad_guard(got, want.size()), -1);
    }
  }
}

TEST(ElementwiseCuda, AddMatchesCpuPlainAndGated) {
  MOERUN_SKIP_WITHOUT_CUDA();
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 31}, {5, 4096}, {2, 7171}}) {
    for (bool gated : {false, true}) {
      const uint64_t seed = static_cast<uint64_t>(rows * 10007 + cols) + (gated ? 1 : 0);
      const auto out0 = uniform(static_cast<size_t>(rows * cols), -2.0f, 2.0f, seed);
      const auto x = uniform(static_cast<size_t>(rows * cols), -2.0f, 2.0f, seed + 1);
      const auto gate = uniform(static_cast<size_t>(rows), -6.0f, 6.0f, seed + 2);
      std::vector<float> want = out0;
      cpu::Context cpu_ctx;
      cpu::add({.out = want.data(), .x = x.data(), .gate = gated ? gate.data() : nullptr, .rows = rows, .cols = cols},
               cpu_ctx);

      std::vector<float> dev_out = out0;
      dev_out.resize(out0.size() + kGuardCount, kGuard);
      DeviceBuffer dout = upload(dev_out), dx = upload(x), dgate = upload(gate);
      cuda::Context ctx;
      cuda::add({.out = dout.as<float>(),
                 .x = dx.as<float>(),
                 .gate = gated ? dgate.as<float>() : nullptr,
                 .rows = rows,
                 .cols = cols},
                ctx);
      const auto got = download(dout);
      EXPECT_LE(max_abs_diff(got, want), max_diff(gated ? Op::add_gated : Op::add))
          << "rows=" << rows << " cols=" << cols << " gated=" << gated << " seed=" << seed;
      EXPECT_EQ(first_bad_guard(got, want.size()), -1);
    }
  }
}

TEST(ElementwiseCuda, ClampMatchesCpu) {
  MOERUN_SKIP_WITHOUT_CUDA();
  for (int64_t n : {1, 5, 1023, 100003}) {
    for (int64_t offset : {0, 1}) {
      const auto x = uniform(static_cast<size_t>(n + offset), -10.0f, 10.0f, static_cast<uint64_t>(n + offset));
      std::vector<float> want(x.begin() + offset, x.end());
      cpu::Context cpu_ctx;
      cpu::clamp({.x = want.data(), .n = n, .limit = 8.0f}, cpu_ctx);

      std::vector<float> dev_x = x;
      dev_x.resize(x.size() + kGuardCount, kGuard);
      DeviceBuffer dx = upload(dev_x);
      cuda::Context ctx;
      cuda::clamp({.x = dx.as<float>() + offset, .n = n, .limit = 8.0f}, ctx);
      const auto all = download(dx);
      const std::vector<float> got(all.begin() + offset, all.begin() + offset + n);
      EXPECT_LE(max_abs_diff(got, want), max_diff(Op::clamp)) << "n=" << n << " offset=" << offset;
      EXPECT_EQ(first_bad_guard(all, x.size()), -1);
      if (offset) {
        EXPECT_EQ(all[0], x[0]) << "the element before the range was touched";
      }
    }
  }
}

TEST(ElementwiseCuda, StoreRowsWritesAtDevicePositions) {
  MOERUN_SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t n, cols, src_stride, cache_stride, capacity;
  };
  for (const Case& c :
       std::vector<Case>{{1, 1, 1, 1, 4}, {3, 576, 576, 576, 50}, {5, 130, 131, 260, 40}, {4, 127, 128, 129, 9}}) {
    const uint64_t seed = static_cast<uint64_t>(c.n * 1000 + c.cols);
    const auto cache0 = uniform(static_cast<size_t>(c.capacity * c.cache_stride), -1.0f, 1.0f, seed);
    const auto src = uniform(static_cast<size_t>(c.n * c.src_stride), -1.0f, 1.0f, seed + 1);
    std::vector<int64_t> positions;
    for (int64_t t = 0; t < c.n; ++t) positions.push_back((t * 7 + 3) % c.capacity);  // distinct, unordered
    std::vector<float> want = cache0;
    cpu::Context cpu_ctx;
    cpu::store_rows({.cache = want.data(),
                     .src = src.data(),
                     .positions = positions.data(),
                     .n = c.n,
                     .cols = c.cols,
                     .src_stride = c.src_stride,
                     .cache_stride = c.cache_stride},
                    cpu_ctx);

    std::vector<float> dev_cache = cache0;
    dev_cache.resize(cache0.size() + kGuardCount, kGuard);
    DeviceBuffer dcache = upload(dev_cache), dsrc = upload(src), dpos = upload(positions);
    cuda::Context ctx;
    cuda::store_rows({.cache = dcache.as<float>(),
                      .src = dsrc.as<float>(),
                      .positions = dpos.as<int64_t>(),
                      .n = c.n,
                      .cols = c.cols,
                      .src_stride = c.src_stride,
                      .cache_stride = c.cache_stride},
                     ctx);
    const auto got = download(dcache);
    EXPECT_LE(max_abs_diff(got, want), max_diff(Op::store_rows)) << "n=" << c.n << " cols=" << c.cols;
    EXPECT_EQ(first_bad_guard(got, want.size()), -1);
  }
}

// store_rows into bf16 and f16 caches: the same bits as the CPU twin (kernels/cpu/kv.cpp), on random rows
// and on the edges of the conversions: ties to even, NaN (either sign, quiet and signalling payloads),
// infinities, f16 overflow (65504 stays, 65520 rounds to inf), f16 subnormals and their rounding, bf16's
// largest finite values. Unordered positions, padded strides; the rest of the cache is untouched.
TEST(ElementwiseCuda, StoreRowsSixteenBitCachesMatchCpuBits) {
  MOERUN_SKIP_WITHOUT_CUDA();
  auto bits = [](uint32_t u) {
    float f = 0.0f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const std::vector<float> edges = {
      bits(0x7fc00000u), bits(0xffc00001u), bits(0x7f800001u), bits(0x7fbfffffu),  // NaNs
      bits(0x7f800000u), bits(0xff800000u), 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e9f, -3e38f,
      bits(0x7f7fffffu), bits(0x7f7f8000u), bits(0x7f7f7fffu),  // near bf16's largest finite value
      1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f, 1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f,  // ties to even
      6.103515625e-05f, 6.1e-05f, 5.96046448e-08f, 2.98023224e-08f, 2.98023253e-08f, 8.9406967e-08f, 1e-10f,
      -1e-10f, bits(0x00000001u), bits(0x80000001u), 0.0f, -0.0f, 0.1f, -0.3f, 1e-3f, 3.14159f};
  struct Case {
    int64_t n, cols, src_stride, cache_stride, capacity;
  };
  for (KvType kv : {KvType::bf16, KvType::f16}) {
    for (const Case& c : std::vector<Case>{{1, 1, 1, 1, 4}, {3, 576, 576, 576, 50}, {5, 130, 131, 260, 40},
                                           {2, static_cast<int64_t>(edges.size()), 40, 41, 7}}) {
      const uint64_t seed = static_cast<uint64_t>(c.n * 1000 + c.cols);
      auto src = uniform(static_cast<size_t>(c.n * c.src_stride), -3.0f, 3.0f, seed + 1);
      if (c.cols == static_cast<int64_t>(edges.size()))
        for (int64_t t = 0; t < c.n; ++t)
          for (int64_t j = 0; j < c.cols; ++j)
            src[static_cast<size_t>(t * c.src_stride + j)] = t == 0 ? edges[static_cast<size_t>(j)]
                                                                    : -edges[static_cast<size_t>(j)];
      std::vector<uint16_t> cache0(static_cast<size_t>(c.capacity * c.cache_stride));
      for (size_t e = 0; e < cache0.size(); ++e) cache0[e] = static_cast<uint16_t>(0x3c00u + (e * 2654435761u) % 977u);
      std::vector<int64_t> positions;
      for (int64_t t = 0; t < c.n; ++t) positions.push_back((t * 7 + 3) % c.capacity);  // distinct, unordered
      std::vector<uint16_t> want = cache0;
      cpu::Context cpu_ctx;
      cpu::store_rows({.cache = want.data(),
                       .cache_type = kv,
                       .src = src.data(),
                       .positions = positions.data(),
                       .n = c.n,
                       .cols = c.cols,
                       .src_stride = c.src_stride,
                       .cache_stride = c.cache_stride},
                      cpu_ctx);

      DeviceBuffer dcache = upload(cache0), dsrc = upload(src), dpos = upload(positions);
      cuda::Context ctx;
      cuda::store_rows({.cache = dcache.data(),
                        .cache_type = kv,
                        .src = dsrc.as<float>(),
                        .positions = dpos.as<int64_t>(),
                        .n = c.n,
                        .cols = c.cols,
                        .src_stride = c.src_stride,
                        .cache_stride = c.cache_stride},
                       ctx);
      std::vector<uint16_t> got(cache0.size());
      ctx.synchronize();
      MOERUN_CUDA_CHECK(cudaMemcpy(got.data(), dcache.data(), got.size() * 2, cudaMemcpyDeviceToHost));
      for (size_t e = 0; e < got.size(); ++e)
        ASSERT_EQ(got[e], want[e]) << kv_type_name(kv) << " n=" << c.n << " cols=" << c.cols << " element " << e;
    }
  }
}

// store_rows with the fused RoPE (StoreRowsParams::rope_*) into f32, bf16 and f16 caches: the same bytes
// as cuda::rope on a copy followed by the plain cuda::store_rows (the fused kernel shares rope.cu's
// arithmetic, kernels/cuda/rope.cuh), src unwritten, rows nobody stores untouched; and within rope's CUDA
// tolerance of the CPU twin (sincosf against the C library: a few ulps before the conversion, so a 16-bit
// element may round one ulp of its type the other way). Both styles, GQA-like rows (several heads of 64
// or 128 dims, whole and partial rotary) and MLA's latent row (64 dims at offset 512 of 576), n = 1, 5 and
// 33 at unordered positions up to a few thousand, padded strides, attention factor 1 and 1.3.
TEST(ElementwiseCuda, StoreRowsFusedRopeMatchesRopeThenStore) {
  MOERUN_SKIP_WITHOUT_CUDA();
  struct Shape {
    const char* name;
    int64_t cols, heads, head_stride, offset, dim;
  };
  const std::vector<Shape> shapes = {{"gqa 4x64", 256, 4, 64, 0, 64},
                                     {"gqa 2x128", 256, 2, 128, 0, 128},
                                     {"gqa 3x128 partial", 384, 3, 128, 0, 64},
                                     {"mla 576", 576, 1, 0, 512, 64}};
  cuda::Context ctx;
  for (KvType kv : {KvType::f32, KvType::bf16, KvType::f16}) {
    const size_t esize = kv == KvType::f32 ? 4 : 2;
    for (RopeStyle style : {RopeStyle::neox, RopeStyle::interleaved}) {
      for (const Shape& sh : shapes) {
        for (int64_t n : {1, 5, 33}) {
          for (float factor : {1.0f, 1.3f}) {
            const uint64_t seed = static_cast<uint64_t>(n * 7919 + sh.cols * 31 + static_cast<int>(kv) * 7 +
                                                        (style == RopeStyle::neox ? 1 : 2));
            const int64_t src_stride = sh.cols + 3, cache_stride = sh.cols + 32, capacity = 4099;
            const auto src = uniform(static_cast<size_t>(n * src_stride), -2.0f, 2.0f, seed);
            std::vector<float> inv_freq(static_cast<size_t>(sh.dim / 2));
            for (size_t i = 0; i < inv_freq.size(); ++i)
              inv_freq[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(sh.dim));
            std::vector<int64_t> positions;
            for (int64_t t = 0; t < n; ++t) positions.push_back((t * 977 + 4000) % capacity);  // distinct, unordered
            std::vector<uint8_t> cache0(static_cast<size_t>(capacity * cache_stride) * esize);
            for (size_t i = 0; i < cache0.size(); ++i) cache0[i] = static_cast<uint8_t>(0x3a ^ (i * 131u));
            const std::string what = std::string(kv_type_name(kv)) + " " + sh.name + " n=" + std::to_string(n) +
                                     (style == RopeStyle::neox ? " neox" : " interleaved") +
                                     " factor=" + std::to_string(factor);

            StoreRowsParams fused{.cache = nullptr, .cache_type = kv, .src = nullptr, .positions = nullptr, .n = n,
                                  .cols = sh.cols, .src_stride = src_stride, .cache_stride = cache_stride,
                                  .rope_inv_freq = nullptr, .rope_heads = sh.heads,
                                  .rope_head_stride = sh.head_stride, .rope_offset = sh.offset,
                                  .rope_dim = sh.dim, .rope_attention_factor = factor, .rope_style = style};
            // The CPU twin.
            std::vector<uint8_t> want = cache0;
            {
              StoreRowsParams c = fused;
              c.cache = want.data();
              c.src = src.data();
              c.positions = positions.data();
              c.rope_inv_freq = inv_freq.data();
              cpu::Context cpu_ctx;
              cpu::store_rows(c, cpu_ctx);
            }

            DeviceBuffer dsrc = upload(src), dsrc2 = upload(src), dfreq = upload(inv_freq), dpos = upload(positions);
            DeviceBuffer dfused = upload(cache0), dunfused = upload(cache0);
            // Fused.
            StoreRowsParams g = fused;
            g.cache = dfused.data();
            g.src = dsrc.as<float>();
            g.positions = dpos.as<int64_t>();
            g.rope_inv_freq = dfreq.as<float>();
            cuda::store_rows(g, ctx);
            // Unfused: rope on a copy, then the plain store.
            cuda::rope({.x = dsrc2.as<float>(),
                        .n_tokens = n,
                        .n_heads = sh.heads,
                        .token_stride = src_stride,
                        .head_stride = sh.head_stride,
                        .rot_offset = sh.offset,
                        .rot_dim = sh.dim,
                        .positions = dpos.as<int64_t>(),
                        .inv_freq = dfreq.as<float>(),
                        .attention_factor = factor,
                        .style = style},
                       ctx);
            cuda::store_rows({.cache = dunfused.data(),
                              .cache_type = kv,
                              .src = dsrc2.as<float>(),
                              .positions = dpos.as<int64_t>(),
                              .n = n,
                              .cols = sh.cols,
                              .src_stride = src_stride,
                              .cache_stride = cache_stride},
                             ctx);
            const auto got = download<uint8_t>(dfused, ctx);
            const auto unfused = download<uint8_t>(dunfused, ctx);
            const auto src_after = download<float>(dsrc, ctx);
            ASSERT_TRUE(got == unfused) << what << ": fused differs from rope then store_rows";
            ASSERT_EQ(std::memcmp(src_after.data(), src.data(), src.size() * 4), 0) << what << ": src was written";
            ASSERT_NE(got, cache0) << what;

            // Against the CPU twin, element by element (untouched elements compare equal bit for bit).
            const float tol = max_diff(Op::rope);
            const float rel = kv == KvType::f32 ? 0.0f : kv == KvType::bf16 ? 1.0f / 128 : 1.0f / 1024;
            for (size_t e = 0; e < got.size() / esize; ++e) {
              float gv = 0.0f, wv = 0.0f;
              if (kv == KvType::f32) {
                std::memcpy(&gv, got.data() + 4 * e, 4);
                std::memcpy(&wv, want.data() + 4 * e, 4);
              } else {
                uint16_t gb = 0, wb = 0;
                std::memcpy(&gb, got.data() + 2 * e, 2);
                std::memcpy(&wb, want.data() + 2 * e, 2);
                if (gb == wb) continue;
                gv = kv == KvType::bf16 ? cpu::bf16_to_f32(gb) : cpu::f16_to_f32(gb);
                wv = kv == KvType::bf16 ? cpu::bf16_to_f32(wb) : cpu::f16_to_f32(wb);
              }
              ASSERT_LE(std::fabs(gv - wv), tol + rel * std::fabs(wv)) << what << " element " << e;
            }
          }
        }
      }
    }
  }
}

// The fused rotation's shape checks, as the CPU twin's.
TEST(ElementwiseCuda, StoreRowsFusedRopeRefusesBadShapes) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const int64_t cols = 128;
  DeviceBuffer dcache = upload(std::vector<float>(static_cast<size_t>(cols), 1.0f)), dsrc = upload(uniform(static_cast<size_t>(cols), -1.0f, 1.0f, 5));
  DeviceBuffer dfreq = upload(uniform(64, 0.01f, 1.0f, 6)), dpos = upload(std::vector<int64_t>{0});
  cuda::Context ctx;
  auto params = [&] {
    return StoreRowsParams{.cache = dcache.data(), .src = dsrc.as<float>(), .positions = dpos.as<int64_t>(), .n = 1,
                           .cols = cols, .src_stride = cols, .cache_stride = cols, .rope_inv_freq = dfreq.as<float>(),
                           .rope_heads = 2, .rope_head_stride = 64, .rope_offset = 0, .rope_dim = 64};
  };
  EXPECT_NO_THROW(cuda::store_rows(params(), ctx));
  StoreRowsParams odd = params();
  odd.rope_dim = 63;
  EXPECT_THROW(cuda::store_rows(odd, ctx), Error);
  StoreRowsParams past_cols = params();
  past_cols.rope_offset = 2;
  EXPECT_THROW(cuda::store_rows(past_cols, ctx), Error);
  StoreRowsParams overlapping = params();
  overlapping.rope_head_stride = 32;
  overlapping.rope_dim = 32;
  overlapping.rope_offset = 16;
  EXPECT_THROW(cuda::store_rows(overlapping, ctx), Error);
  ctx.synchronize();
}

TEST(ElementwiseCuda, CopyStrided) {
  MOERUN_SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t rows, cols, dst_stride, src_stride;
  };
  for (const Case& c : std::vector<Case>{
           {1, 1, 1, 1}, {1, 100000, 100000, 100000}, {7, 64, 128, 64}, {9, 33, 35, 40}, {3, 512, 576, 512}}) {
    const uint64_t seed = static_cast<uint64_t>(c.rows * 100 + c.cols);
    const auto src = uniform(static_cast<size_t>(c.rows * c.src_stride), -1.0f, 1.0f, seed);
    const auto dst0 = uniform(static_cast<size_t>(c.rows * c.dst_stride), -1.0f, 1.0f, seed + 1);
    std::vector<float> want = dst0;
    cpu::Context cpu_ctx;
    cpu::copy({.dst = want.data(),
               .src = src.data(),
               .rows = c.rows,
               .cols = c.cols,
               .dst_stride = c.dst_stride,
               .src_stride = c.src_stride},
              cpu_ctx);

    std::vector<float> dev_dst = dst0;
    dev_dst.resize(dst0.size() + kGuardCount, kGuard);
    DeviceBuffer ddst = upload(dev_dst), dsrc = upload(src);
    cuda::Context ctx;
    cuda::copy({.dst = ddst.as<float>(),
                .src = dsrc.as<float>(),
                .rows = c.rows,
                .cols = c.cols,
                .dst_stride = c.dst_stride,
                .src_stride = c.src_stride},
               ctx);
    const auto got = download(ddst);
    EXPECT_LE(max_abs_diff(got, want), max_diff(Op::copy)) << "rows=" << c.rows << " cols=" << c.cols;
    EXPECT_EQ(first_bad_guard(got, want.size()), -1);
  }
}

TEST(ElementwiseCuda, CopyRefusesOverlap) {
  MOERUN_SKIP_WITHOUT_CUDA();
  DeviceBuffer d = upload(uniform(100, -1.0f, 1.0f, 5));
  cuda::Context ctx;
  EXPECT_THROW(
      cuda::copy(
          {.dst = d.as<float>() + 1, .src = d.as<float>(), .rows = 2, .cols = 10, .dst_stride = 10, .src_stride = 10},
          ctx),
      std::runtime_error);
}

}  // namespace
}  // namespace moerun
