// matmul_group: several matmuls of the same rows in one pass over the pool give exactly what each
// matmul gives on its own (every weight dtype, different output sizes, with and without a pool).

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/dtype.h"
#include "moerun/error.h"

namespace moerun {
namespace {

std::vector<float> random_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = (rng() & 1) ? u(rng) : -u(rng);  // never zero
  return v;
}

// One weight matrix [out, in] of `dtype` made from random floats.
std::vector<uint8_t> weights(DType dtype, int64_t out, int64_t in, uint64_t seed) {
  const std::vector<float> f = random_floats(static_cast<size_t>(out * in), seed);
  std::vector<uint8_t> bytes(dtype_bytes(dtype, out * in) + 64);
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), f.data(), f.size() * sizeof(float));
  } else if (dtype == DType::bf16) {
    for (size_t i = 0; i < f.size(); ++i) {
      const uint16_t h = cpu::f32_to_bf16(f[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  } else {
    const size_t row = dtype_bytes(dtype, in);
    for (int64_t o = 0; o < out; ++o) cpu::quantize_row(dtype, f.data() + o * in, in, bytes.data() + static_cast<size_t>(o) * row);
  }
  return bytes;
}

TEST(MatmulGroup, EqualsEachMatmulAloneBitForBit) {
  const int64_t in = 96;
  for (int64_t n : {1, 3, 17}) {
    const std::vector<float> x = random_floats(static_cast<size_t>(n * in), 7 + static_cast<uint64_t>(n));
    const DType dtypes[] = {DType::bf16, DType::q8_0, DType::f32, DType::q4_0};
    const int64_t outs[] = {40, 17, 160, 33};
    std::vector<std::vector<uint8_t>> w;
    std::vector<std::vector<float>> alone(4), grouped(4);
    std::vector<MatmulParams> ps;
    for (size_t i = 0; i < 4; ++i) {
      w.push_back(weights(dtypes[i], outs[i], in, 100 + i));
      alone[i].assign(static_cast<size_t>(n * outs[i]), 0.0f);
      grouped[i].assign(static_cast<size_t>(n * outs[i]), -1.0f);
      MatmulParams p{.out = alone[i].data(), .x = x.data(), .weight = w[i].data(), .weight_dtype = dtypes[i], .n = n,
                     .in_features = in, .out_features = outs[i]};
      cpu::matmul(p);
      p.out = grouped[i].data();
      ps.push_back(p);
    }
    for (int threads : {1, 2, 3}) {
      cpu::ThreadPool pool(threads);
      cpu::matmul_group(ps.data(), ps.size(), threads == 1 ? nullptr : &pool);
      for (size_t i = 0; i < 4; ++i) EXPECT_EQ(grouped[i], alone[i]) << "entry " << i << " n " << n << " threads " << threads;
    }
  }
}

TEST(MatmulGroup, EmptyEntriesAndTooManyEntries) {
  const std::vector<float> x = random_floats(64, 1);
  const std::vector<uint8_t> w = weights(DType::f32, 8, 64, 2);
  std::vector<float> out(8, -1.0f);
  const MatmulParams ok{.out = out.data(), .x = x.data(), .weight = w.data(), .n = 1, .in_features = 64, .out_features = 8};
  MatmulParams none = ok;
  none.n = 0;  // nothing to compute: skipped
  const MatmulParams two[] = {none, ok};
  cpu::matmul_group(two, 2, nullptr);
  EXPECT_NE(out[7], -1.0f);
  const MatmulParams five[] = {ok, ok, ok, ok, ok};
  EXPECT_THROW(cpu::matmul_group(five, 5, nullptr), Error);
}

}  // namespace
}  // namespace moerun
