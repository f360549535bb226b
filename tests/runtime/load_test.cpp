// Load-time preparation on a thread pool (model::prepare_weights): bit-identical to the pool-less
// call and to the scalar formulas the conversions are defined by, progress that reaches its total,
// and locking that either works or says how to raise the limit.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "model/convert.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "support/golden.h"

namespace moerun {
namespace {

// A tensor of random bytes (`make` fills them) at `offset` bytes past an aligned buffer: offset 1
// makes a misaligned view, as an unpadded safetensors header would.
template <class Fill>
Tensor make_tensor(DType dtype, const Shape& shape, Fill fill, size_t offset = 0) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const size_t bytes = dtype_bytes(dtype, n);
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[bytes + offset + 8]);
  fill(buf.get() + offset, n);
  return Tensor(dtype, shape, buf.get() + offset, std::shared_ptr<const void>(buf, buf.get()));
}

Tensor random_fp8(const Shape& shape, uint32_t seed) {
  return make_tensor(DType::f8_e4m3, shape, [&](std::byte* p, int64_t n) {
    std::mt19937 rng(seed);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>(rng() & 0xff);  // every byte, NaN included
  });
}

// bf16 from the top half of a random normal float; f16 near 1 (norms); f32 scales in [2^-12, 1).
Tensor random_bf16(const Shape& shape, uint32_t seed, size_t offset = 0) {
  return make_tensor(DType::bf16, shape, [&](std::byte* p, int64_t n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = cpu::f32_to_bf16(dist(rng));
      std::memcpy(p + 2 * i, &h, 2);
    }
  }, offset);
}

Tensor random_f16(const Shape& shape, uint32_t seed) {
  return make_tensor(DType::f16, shape, [&](std::byte* p, int64_t n) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(0.5f, 1.5f);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = cpu::f32_to_f16(dist(rng));
      std::memcpy(p + 2 * i, &h, 2);
    }
  });
}

Tensor random_scales(const Shape& shape, uint32_t seed) {
  return make_tensor(DType::f32, shape, [&](std::byte* p, int64_t n) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-12.0f, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float f = std::exp2(dist(rng));
      std::memcpy(p + 4 * i, &f, 4);
    }
  });
}

// Weights large enough that a 1 MiB piece is a fraction of a matrix, so two threads share them:
// an FP8 projection with block scales, a bf16 one, a misaligned bf16 one, f16 norms, a table.
ModelWeights test_weights() {
  ModelWeights w;
  w.embed_tokens = random_bf16({64, 256}, 1);
  w.layers.resize(1);
  LayerWeights& L = w.layers[0];
  L.input_layernorm = random_f16({2048}, 2);
  L.q_proj.weight = random_fp8({1536, 2048}, 3);  // 3 MiB
  L.q_proj.weight_scale_inv = random_scales({12, 16}, 4);
  L.o_proj.weight = random_bf16({2048, 1536}, 5);  // 6 MiB
  L.mlp.down_proj.weight = random_bf16({256, 2048}, 6, /*offset=*/1);  // misaligned: copied, or quantized
  w.norm = random_f16({256}, 7);
  w.lm_head = random_bf16({512, 256}, 8);
  return w;
}

ModelDesc test_desc() {
  ModelDesc d;
  d.fp8.enabled = true;
  return d;  // blocks of 128 x 128
}

// Same tensors, same dtypes and shapes, same bytes.
void expect_identical(const ModelWeights& a, const ModelWeights& b) {
  std::vector<Tensor> ta, tb;
  for_each_tensor(a, [&](const WeightSite&, LinearPart, const Tensor& t) { ta.push_back(t); });
  for_each_tensor(b, [&](const WeightSite&, LinearPart, const Tensor& t) { tb.push_back(t); });
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    ASSERT_EQ(ta[i].dtype(), tb[i].dtype()) << "tensor " << i;
    ASSERT_EQ(ta[i].shape(), tb[i].shape()) << "tensor " << i;
    ASSERT_EQ(std::memcmp(ta[i].data(), tb[i].data(), ta[i].nbytes()), 0) << "tensor " << i << " differs";
  }
}

bool same_bytes(const Tensor& t, const std::vector<std::byte>& want) {
  return t.nbytes() == want.size() && std::memcmp(t.data(), want.data(), want.size()) == 0;
}

// The definitions, element by element as the loader computed them before it ran on a pool.
float fp8_ref(const Tensor& q, const Tensor& s, int64_t i, int64_t j) {
  const int64_t cols = q.dim(1);
  return cpu::f8_e4m3_to_f32(q.data_as<uint8_t>()[i * cols + j]) * s.data_as<float>()[(i / 128) * s.dim(1) + j / 128];
}

std::vector<std::byte> dequantized_ref(const Tensor& q, const Tensor& s, DType to) {
  const int64_t rows = q.dim(0), cols = q.dim(1);
  std::vector<std::byte> out(dtype_bytes(to, rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float v = fp8_ref(q, s, i, j);
      if (to == DType::f32) {
        std::memcpy(out.data() + 4 * (i * cols + j), &v, 4);
      } else {
        const uint16_t h = cpu::f32_to_bf16(v);
        std::memcpy(out.data() + 2 * (i * cols + j), &h, 2);
      }
    }
  return out;
}

std::vector<std::byte> quantized_ref(const Tensor& w, const Tensor& s, DType to) {
  const int64_t rows = w.dim(0), cols = w.dim(1);
  const size_t row_bytes = dtype_bytes(to, cols);
  std::vector<std::byte> out(row_bytes * static_cast<size_t>(rows));
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j)
      row[static_cast<size_t>(j)] = w.dtype() == DType::f8_e4m3 ? fp8_ref(w, s, i, j) : cpu::load_f32(w.data(), w.dtype(), i * cols + j);
    cpu::quantize_row(to, row.data(), cols, out.data() + static_cast<size_t>(i) * row_bytes);
  }
  return out;
}

std::vector<std::byte> f32_ref(const Tensor& t) {
  std::vector<std::byte> out(static_cast<size_t>(t.numel()) * 4);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float f = cpu::load_f32(t.data(), t.dtype(), i);
    std::memcpy(out.data() + 4 * i, &f, 4);
  }
  return out;
}

struct Case {
  const char* name;
  model::PrepareOptions options;
};

class PrepareOnPool : public ::testing::TestWithParam<Case> {};

TEST_P(PrepareOnPool, TwoThreadsGiveTheSameBytesAsOneAndAsTheDefinitions) {
  const model::PrepareOptions& o = GetParam().options;
  const ModelWeights w = test_weights();
  const ModelDesc d = test_desc();
  const ModelWeights alone = model::prepare_weights(w, d, o);
  cpu::ThreadPool pool(2);
  const ModelWeights shared = model::prepare_weights(w, d, o, &pool);
  expect_identical(alone, shared);

  const LayerWeights& L = shared.layers[0];
  const Tensor& q = w.layers[0].q_proj.weight;
  const Tensor& s = w.layers[0].q_proj.weight_scale_inv;
  // f16 norms become f32 copies, whatever the options.
  EXPECT_EQ(L.input_layernorm.dtype(), DType::f32);
  EXPECT_TRUE(same_bytes(L.input_layernorm, f32_ref(w.layers[0].input_layernorm)));
  EXPECT_TRUE(same_bytes(shared.norm, f32_ref(w.norm)));
  EXPECT_EQ(shared.embed_tokens.data(), w.embed_tokens.data());  // the table stays a view
  if (o.quant != WeightQuant::none) {
    const DType to = o.quant == WeightQuant::q8 ? DType::q8_0 : DType::q4_0;
    EXPECT_EQ(L.q_proj.weight.dtype(), to);
    EXPECT_FALSE(L.q_proj.weight_scale_inv.defined());  // folded into the quantized weight
    EXPECT_TRUE(same_bytes(L.q_proj.weight, quantized_ref(q, s, to))) << "FP8 -> " << dtype_name(to);
    EXPECT_TRUE(same_bytes(L.o_proj.weight, quantized_ref(w.layers[0].o_proj.weight, {}, to))) << "bf16 -> " << dtype_name(to);
    EXPECT_TRUE(same_bytes(L.mlp.down_proj.weight, quantized_ref(w.layers[0].mlp.down_proj.weight, {}, to))) << "misaligned bf16";
  } else {
    EXPECT_EQ(L.q_proj.weight.dtype(), o.fp8_to);
    EXPECT_TRUE(same_bytes(L.q_proj.weight, dequantized_ref(q, s, o.fp8_to))) << "FP8 -> " << dtype_name(o.fp8_to);
    EXPECT_EQ(L.o_proj.weight.data(), w.layers[0].o_proj.weight.data());  // aligned bf16: a view
    const Tensor& mis = w.layers[0].mlp.down_proj.weight;
    EXPECT_NE(L.mlp.down_proj.weight.data(), mis.data());  // misaligned: an aligned copy of the same bytes
    EXPECT_EQ(reinterpret_cast<uintptr_t>(L.mlp.down_proj.weight.data()) % 2, 0u);
    EXPECT_EQ(std::memcmp(L.mlp.down_proj.weight.data(), mis.data(), mis.nbytes()), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Load, PrepareOnPool,
                         ::testing::Values(Case{"fp8_bf16", {.fp8_to = DType::bf16}}, Case{"fp8_f32", {.fp8_to = DType::f32}},
                                           Case{"q8", {.quant = WeightQuant::q8}}, Case{"q4", {.quant = WeightQuant::q4}}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// The q8_0 formula of kernels/cpu/quant.h written plainly, one weight at a time: d = max |w| / 127
// rounded to fp16 (a NaN never the max), q = clamp(nearest-even(w * (1 / d)), -127, 127), -127 for a
// NaN product; quants stored + 128, each group of 16 blocks' quants before its scales.
void q8_reference(const float* src, int64_t k, std::byte* dst) {
  const int64_t nb = k / cpu::kQuantBlock, qb = cpu::quant_block_bytes(DType::q8_0);
  auto* out = reinterpret_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t g = b / cpu::kQuantGroupBlocks, j = b % cpu::kQuantGroupBlocks;
    const int64_t count = std::min(cpu::kQuantGroupBlocks, nb - g * cpu::kQuantGroupBlocks);
    uint8_t* quants = out + cpu::quant_group_offset(DType::q8_0, g);
    const float* w = src + b * cpu::kQuantBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < cpu::kQuantBlock; ++i)
      if (std::fabs(w[i]) > amax) amax = std::fabs(w[i]);
    const uint16_t h = cpu::f32_to_f16(amax / 127.0f);
    const float d = cpu::f16_to_f32(h), inv = d != 0.0f ? 1.0f / d : 0.0f;
    for (int64_t i = 0; i < cpu::kQuantBlock; ++i) {
      const float x = w[i] * inv;
      const int q = std::isnan(x) ? -127 : std::clamp(static_cast<int>(std::nearbyint(x)), -127, 127);
      quants[j * qb + i] = static_cast<uint8_t>(q + 128);
    }
    std::memcpy(quants + count * qb + 2 * j, &h, 2);
  }
}

// The loader's q8_0 rows (cpu::quantize_row's vectorized loop) against the formula written plainly,
// on the values where rounding and scaling have edges: ties, zeros, fp16-subnormal and overflowing
// scales, infinities and NaNs.
TEST(Load, Q8RowsMatchTheScalarQuantizerOnEdgeValues) {
  constexpr int64_t kCols = 64;  // two blocks a row
  std::vector<std::vector<float>> rows;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> ties(kCols);
  for (int64_t j = 0; j < kCols; ++j) ties[static_cast<size_t>(j)] = j == 0 ? 127.0f : 0.5f * static_cast<float>(j - 32);  // d = 1: x.5 ties
  rows.push_back(ties);
  rows.emplace_back(kCols, 0.0f);
  rows.emplace_back(kCols, -0.0f);
  for (float scale : {1e-12f, 3e-9f, 4e-9f, 7.5e-9f, 1e-7f, 2e-6f, 1e-5f, 7.8e-3f, 1.0f, 8.3e6f, 1e7f, 3e38f}) {
    std::mt19937 rng(static_cast<uint32_t>(scale * 1e3f) + 1);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> r(kCols);
    for (float& v : r) v = scale * dist(rng);
    rows.push_back(r);
  }
  std::vector<float> special(kCols, 0.25f);
  special[3] = inf;
  special[40] = nan;
  special[41] = -inf;
  rows.push_back(special);
  std::vector<float> nans(kCols, nan);
  nans[7] = 1.0f;
  rows.push_back(nans);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> expo(-40.0f, 20.0f), dist(-1.0f, 1.0f);
  for (int i = 0; i < 500; ++i) {  // random magnitudes, one scale per block
    std::vector<float> r(kCols);
    for (int64_t b = 0; b < 2; ++b) {
      const float s = std::exp2(expo(rng));
      for (int64_t j = 0; j < 32; ++j) r[static_cast<size_t>(b * 32 + j)] = s * dist(rng);
    }
    rows.push_back(r);
  }
  const auto n = static_cast<int64_t>(rows.size());
  const Tensor w = make_tensor(DType::f32, {n, kCols}, [&](std::byte* p, int64_t) {
    for (int64_t i = 0; i < n; ++i) std::memcpy(p + i * kCols * 4, rows[static_cast<size_t>(i)].data(), kCols * 4);
  });
  const Tensor q = model::quantize_matrix(w, {}, 128, 128, DType::q8_0);
  const size_t row_bytes = dtype_bytes(DType::q8_0, kCols);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::byte> want(row_bytes);
    q8_reference(rows[static_cast<size_t>(i)].data(), kCols, want.data());
    EXPECT_EQ(std::memcmp(q.data_as<std::byte>() + i * static_cast<int64_t>(row_bytes), want.data(), row_bytes), 0) << "row " << i;
  }
}

TEST(Load, ProgressReachesTheTotalFromTheCallingThreadAFewTimes) {
  const ModelWeights w = test_weights();
  cpu::ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  bool other_thread = false, other_stage = false;
  model::prepare_weights(w, test_desc(), {.quant = WeightQuant::q8}, &pool, [&](std::string_view stage, uint64_t done, uint64_t total) {
    other_thread |= std::this_thread::get_id() != caller;
    other_stage |= stage != "converting weights";
    calls.emplace_back(done, total);
  });
  EXPECT_FALSE(other_thread);
  EXPECT_FALSE(other_stage);
  ASSERT_FALSE(calls.empty());
  EXPECT_LE(calls.size(), 110u);
  // Every converted source byte: the FP8 and two bf16 projections, the lm_head, both f16 norms.
  const uint64_t total = 1536 * 2048 + 2 * 2048 * 1536 + 2 * 256 * 2048 + 2 * 512 * 256 + 2 * 2048 + 2 * 256;
  EXPECT_EQ(calls.back(), std::make_pair(total, total));
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_LE(calls[i - 1].first, calls[i].first);
    EXPECT_EQ(calls[i].second, total);
  }
}

TEST(Load, AnErrorFromProgressStopsTheWorkAndPropagates) {
  const ModelWeights w = test_weights();
  cpu::ThreadPool pool(2);
  int n = 0;
  EXPECT_THROW(model::prepare_weights(w, test_desc(), {.quant = WeightQuant::q4}, &pool,
                                      [&](std::string_view, uint64_t, uint64_t) {
                                        if (++n == 2) throw std::runtime_error("cancelled");
                                      }),
               std::runtime_error);
  // The pool is usable afterwards.
  const ModelWeights again = model::prepare_weights(w, test_desc(), {.quant = WeightQuant::q4}, &pool);
  expect_identical(again, model::prepare_weights(w, test_desc(), {.quant = WeightQuant::q4}));
}

TEST(Load, NothingToConvertStillReportsTheEnd) {
  ModelWeights w;
  w.embed_tokens = random_bf16({64, 256}, 1);
  cpu::ThreadPool pool(2);
  int calls = 0;
  const ModelWeights p = model::prepare_weights(w, test_desc(), {}, &pool, [&](std::string_view, uint64_t done, uint64_t total) {
    ++calls;
    EXPECT_EQ(done, total);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(p.embed_tokens.data(), w.embed_tokens.data());
}

// mlock works (root, or a high enough RLIMIT_MEMLOCK) or is an Error that says how to raise the limit.
void expect_locked_or_explained(const std::function<void()>& lock) {
  try {
    lock();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ulimit -l"), std::string::npos) << what;
    EXPECT_NE(what.find("RLIMIT_MEMLOCK"), std::string::npos) << what;
  }
}

TEST(Load, LockingWeightsWorksOrExplainsTheLimit) {
  const ModelWeights w = test_weights();
  cpu::ThreadPool pool(2);
  const ModelWeights prepared = model::prepare_weights(w, test_desc(), {.quant = WeightQuant::q8}, &pool);
  expect_locked_or_explained([&] { model::lock_weights(prepared); });
  const Model model = Model::load(testing::golden_dir("deepseek_v3_fp8"));
  expect_locked_or_explained([&] { model::lock_weights(model.weights()); });
}

}  // namespace
}  // namespace moerun
