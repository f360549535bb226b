// cpu::moe with a shared expert (MoeParams::shared_gate): the fused op must give, bit for bit, what
// the executor computed when the shared expert was a separate FFN: the routed experts into out, then
// matmul_group(gate, up) over x, gated_act, matmul(down) into a buffer, and add's out += s. Every
// expert weight dtype the CPU moe runs (f32, bf16, FP8 with block scales, q8_0, q4_0), one token (the
// grouped decode path) and several (the batched path), with and without a pool, every selected expert
// held elsewhere (the shared expert still adds), and the missing-pointer errors.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/dtype.h"
#include "moerun/error.h"

namespace moerun {
namespace {

std::vector<float> random_floats(size_t n, float r, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.05f * r, r);
  std::vector<float> v(n);
  for (float& x : v) x = (rng() & 1) ? u(rng) : -u(rng);  // never zero
  return v;
}

// A weight matrix [out, in] of `dtype` (values about +-r) and, for FP8, its block scales.
struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
};

Matrix make_matrix(DType dtype, int64_t out, int64_t in, float r, int64_t block_out, int64_t block_in, uint64_t seed) {
  Matrix m;
  const size_t n = static_cast<size_t>(out * in);
  if (dtype == DType::f8_e4m3) {  // normal E4M3 magnitudes 1/8 .. 15, random sign; scales bring them to ~r
    std::mt19937_64 rng(seed);
    m.bytes.resize(n);
    for (uint8_t& b : m.bytes) {
      const uint64_t u = rng();
      b = static_cast<uint8_t>(((u & 1u) << 7) | ((4u + (u >> 1) % 7u) << 3) | ((u >> 8) & 7u));
    }
    const int64_t sr = (out + block_out - 1) / block_out, sc = (in + block_in - 1) / block_in;
    m.scale = random_floats(static_cast<size_t>(sr * sc), 0.3f * r, seed + 1);
    for (float& s : m.scale) s = std::abs(s);
    return m;
  }
  const std::vector<float> f = random_floats(n, r, seed);
  m.bytes.resize(dtype_bytes(dtype, out * in));
  if (dtype == DType::f32) {
    std::memcpy(m.bytes.data(), f.data(), n * sizeof(float));
  } else if (dtype == DType::bf16) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = cpu::f32_to_bf16(f[i]);
      std::memcpy(m.bytes.data() + 2 * i, &h, 2);
    }
  } else {
    const size_t row = dtype_bytes(dtype, in);
    for (int64_t o = 0; o < out; ++o)
      cpu::quantize_row(dtype, f.data() + o * in, in, m.bytes.data() + static_cast<size_t>(o) * row);
  }
  return m;
}

struct Layer {
  DType dtype;
  int64_t E, K, D, I, block_out, block_in;
  std::vector<Matrix> gate, up, down;  // [E + 1]: the routed experts, then the shared one
  std::vector<const void*> gt, ut, dt;
  std::vector<const float*> gs_tbl, us_tbl, ds_tbl;

  Layer(DType dtype_, int64_t E_, int64_t K_, int64_t D_, int64_t I_, int64_t bo, int64_t bi, uint64_t seed)
      : dtype(dtype_), E(E_), K(K_), D(D_), I(I_), block_out(bo), block_in(bi) {
    const float rg = 1.0f / std::sqrt(static_cast<float>(D)), rd = 2.0f / std::sqrt(static_cast<float>(I));
    for (int64_t e = 0; e <= E; ++e) {
      const uint64_t s = seed + 3 * static_cast<uint64_t>(e);
      gate.push_back(make_matrix(dtype, I, D, rg, bo, bi, s));
      up.push_back(make_matrix(dtype, I, D, rg, bo, bi, s + 1));
      down.push_back(make_matrix(dtype, D, I, rd, bo, bi, s + 2));
    }
    for (int64_t e = 0; e < E; ++e) {
      const auto q = static_cast<size_t>(e);
      gt.push_back(gate[q].bytes.data()), ut.push_back(up[q].bytes.data()), dt.push_back(down[q].bytes.data());
      gs_tbl.push_back(gate[q].scale.data()), us_tbl.push_back(up[q].scale.data());
      ds_tbl.push_back(down[q].scale.data());
    }
  }
  bool fp8() const { return dtype == DType::f8_e4m3; }
  const Matrix& sg() const { return gate.back(); }
  const Matrix& su() const { return up.back(); }
  const Matrix& sd() const { return down.back(); }

  MoeParams routed(float* out, const float* x, const int32_t* ids, const float* w, int64_t n) const {
    return {.out = out, .x = x, .expert_ids = ids, .expert_weights = w, .gate = gt.data(), .up = ut.data(),
            .down = dt.data(), .weight_dtype = dtype, .n_tokens = n, .top_k = K, .n_experts = E, .hidden = D,
            .intermediate = I, .act = Activation::silu, .gate_scale = fp8() ? gs_tbl.data() : nullptr,
            .up_scale = fp8() ? us_tbl.data() : nullptr, .down_scale = fp8() ? ds_tbl.data() : nullptr,
            .block_out = block_out, .block_in = block_in};
  }
  MoeParams fused(float* out, const float* x, const int32_t* ids, const float* w, int64_t n) const {
    MoeParams p = routed(out, x, ids, w, n);
    p.shared_gate = sg().bytes.data(), p.shared_up = su().bytes.data(), p.shared_down = sd().bytes.data();
    if (fp8()) {
      p.shared_gate_scale = sg().scale.data(), p.shared_up_scale = su().scale.data();
      p.shared_down_scale = sd().scale.data();
    }
    return p;
  }

  // What the executor did before the fusion: moe (routed), then its swiglu (lin_params' matmuls: FP8
  // scales only for FP8 weights) into s, then add.
  std::vector<float> unfused(const float* x, const int32_t* ids, const float* w, int64_t n, cpu::Context& ctx) const {
    std::vector<float> out(static_cast<size_t>(n * D), -7.0f), g(static_cast<size_t>(n * I)), u(g.size()),
        s(static_cast<size_t>(n * D));
    cpu::moe(routed(out.data(), x, ids, w, n), ctx);
    auto lin = [&](float* dst, const float* src, const Matrix& m, int64_t in, int64_t outf) {
      return MatmulParams{.out = dst, .x = src, .weight = m.bytes.data(), .weight_dtype = dtype, .n = n,
                          .in_features = in, .out_features = outf, .weight_scale = fp8() ? m.scale.data() : nullptr,
                          .block_out = block_out, .block_in = block_in};
    };
    const MatmulParams gate_up[] = {lin(g.data(), x, sg(), D, I), lin(u.data(), x, su(), D, I)};
    cpu::matmul_group(gate_up, 2, ctx);
    cpu::gated_act({.out = g.data(), .gate = g.data(), .up = u.data(), .n = n * I, .act = Activation::silu}, ctx);
    cpu::matmul(lin(s.data(), g.data(), sd(), I, D), ctx);
    cpu::add({.out = out.data(), .x = s.data(), .rows = n, .cols = D}, ctx);
    return out;
  }
};

std::vector<int32_t> random_ids(int64_t n, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  std::vector<int32_t> all(static_cast<size_t>(E));
  for (int32_t e = 0; e < E; ++e) all[static_cast<size_t>(e)] = e;
  for (int64_t t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + K);
  }
  return ids;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(MoeShared, FusedEqualsTheUnfusedSequenceBitForBit) {
  struct Shape {
    DType dtype;
    int64_t block_out, block_in;
  };
  // D and I multiples of 32 (the q8_0/q4_0 blocks); FP8 also with scale blocks that cut rows.
  const Shape shapes[] = {{DType::f32, 128, 128},  {DType::bf16, 128, 128}, {DType::f8_e4m3, 128, 128},
                          {DType::f8_e4m3, 48, 24}, {DType::q8_0, 128, 128}, {DType::q4_0, 128, 128}};
  uint64_t seed = 1;
  for (const Shape& sh : shapes) {
    const Layer layer(sh.dtype, 12, 4, 160, 96, sh.block_out, sh.block_in, seed * 101);
    for (const int threads : {1, 3}) {
      std::unique_ptr<cpu::ThreadPool> pool = threads > 1 ? std::make_unique<cpu::ThreadPool>(threads) : nullptr;
      cpu::Context ctx(pool.get());
      for (const int64_t n : {1, 5, 40}) {
        SCOPED_TRACE(std::string(dtype_name(sh.dtype)) + " blocks " + std::to_string(sh.block_out) + "x" +
                     std::to_string(sh.block_in) + " threads " + std::to_string(threads) + " n " + std::to_string(n));
        const std::vector<float> x = random_floats(static_cast<size_t>(n * layer.D), 1.0f, seed + 10);
        const std::vector<int32_t> ids = random_ids(n, layer.K, layer.E, seed + 11);
        const std::vector<float> w = random_floats(ids.size(), 1.0f, seed + 12);
        const std::vector<float> want = layer.unfused(x.data(), ids.data(), w.data(), n, ctx);
        std::vector<float> got(want.size(), std::nanf(""));
        cpu::moe(layer.fused(got.data(), x.data(), ids.data(), w.data(), n), ctx);
        EXPECT_TRUE(same_bits(got, want)) << "fused differs from moe + swiglu + add";
        // The shared expert really is in there: the routed sum alone differs.
        std::vector<float> routed(want.size());
        cpu::moe(layer.routed(routed.data(), x.data(), ids.data(), w.data(), n), ctx);
        EXPECT_FALSE(same_bits(routed, want));
        ++seed;
      }
    }
  }
}

// Expert parallel: a rank that holds none of the selected experts (null table entries) still adds
// the shared expert (the executor gives it to rank 0 alone); its out is then exactly the shared FFN.
TEST(MoeShared, AddsTheSharedExpertWhenNoSelectedExpertIsHeld) {
  Layer layer(DType::bf16, 6, 2, 64, 64, 128, 128, 5);
  for (size_t e = 0; e < layer.gt.size(); ++e) layer.gt[e] = layer.ut[e] = layer.dt[e] = nullptr;
  cpu::Context ctx;
  for (const int64_t n : {1, 5}) {
    const std::vector<float> x = random_floats(static_cast<size_t>(n * layer.D), 1.0f, 40);
    const std::vector<int32_t> ids = random_ids(n, layer.K, layer.E, 41);
    const std::vector<float> w = random_floats(ids.size(), 1.0f, 42);
    const std::vector<float> want = layer.unfused(x.data(), ids.data(), w.data(), n, ctx);
    std::vector<float> got(want.size(), std::nanf(""));
    cpu::moe(layer.fused(got.data(), x.data(), ids.data(), w.data(), n), ctx);
    EXPECT_TRUE(same_bits(got, want)) << "n " << n;
    bool any_nonzero = false;
    for (float v : got) any_nonzero = any_nonzero || v != 0.0f;
    EXPECT_TRUE(any_nonzero);
  }
}

TEST(MoeShared, RejectsAnIncompleteSharedExpert) {
  const Layer layer(DType::f8_e4m3, 4, 2, 64, 64, 128, 128, 9);
  cpu::Context ctx;
  const std::vector<float> x = random_floats(64, 1.0f, 1), w = {0.5f, 0.5f};
  const std::vector<int32_t> ids = {0, 1};
  std::vector<float> out(64);
  MoeParams p = layer.fused(out.data(), x.data(), ids.data(), w.data(), 1);
  p.shared_down_scale = nullptr;
  EXPECT_THROW(cpu::moe(p, ctx), Error);
  p = layer.fused(out.data(), x.data(), ids.data(), w.data(), 1);
  p.shared_up = nullptr;
  EXPECT_THROW(cpu::moe(p, ctx), Error);
}

}  // namespace
}  // namespace moerun
