// CUDA kernels on tensors of real-model size, where 32-bit offsets would overflow: a GEMV over an lm_head-sized
// weight (129280 x 7168, DeepSeek-V3's vocabulary x hidden) in bf16 (1.85 GB: byte offsets past 1 GB) and in
// f32 (3.7 GB: past 2 GB and 2^31), the embedding of the last row of a table that size, and the bf16 matmul
// at every token count from 1 across the GEMV/cuBLAS boundary against the CPU twin.
// The big weight is a repeating host pattern (a prime period, so a wrong row offset reads other values)
// uploaded chunk by chunk; the reference is computed on the host for sampled rows only (the first, some
// around the 1 GB and 2 GB byte offsets, the last ones). Budget: a few seconds on an H200 (~4 GB of uploads,
// a few GEMVs); skips when the device lacks the memory.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "kernels/cpu/context.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/gemm.h"
#include "kernels/ops.h"
#include "support/op_tolerances.h"

namespace moerun {
namespace {

using namespace cuda::testing;

constexpr int64_t kVocab = 129280, kHidden = 7168;  // DeepSeek-V3's lm_head / embedding
constexpr int64_t kPeriod = 1048573;                // the pattern's period in elements: a prime
constexpr size_t kHeadroom = size_t{1} << 30;       // free memory kept beyond the test's own buffers

// Skips (returns false) unless the device has `bytes` free plus headroom; says how much it has.
bool enough_memory(size_t bytes, std::string& why) {
  const cuda::MemoryInfo m = cuda::memory_info();
  if (m.free >= bytes + kHeadroom) return true;
  std::ostringstream os;
  os << "needs " << (bytes + kHeadroom) / (1 << 20) << " MiB of free device memory, the device has "
     << m.free / (1 << 20) << " MiB free of " << m.total / (1 << 20) << " MiB";
  why = os.str();
  return false;
}

// The weight [rows, cols] of `dtype` (f32 or bf16) whose element k is pattern k % kPeriod, in `buf`.
struct Pattern {
  HostWeights host;  // kPeriod elements: bytes and the values they hold
};

Pattern make_pattern(DType dtype, uint64_t seed) {
  const float r = 1.0f / std::sqrt(static_cast<float>(kHidden));
  return {to_dtype(uniform(static_cast<size_t>(kPeriod), -r, r, seed), dtype)};
}

void fill(const DeviceBuffer& buf, const Pattern& p, int64_t elements, size_t elt) {
  const size_t period_bytes = static_cast<size_t>(kPeriod) * elt, total = static_cast<size_t>(elements) * elt;
  auto* dst = static_cast<char*>(buf.data());
  for (size_t off = 0; off < total; off += period_bytes)
    MOERUN_CUDA_CHECK(cudaMemcpy(dst + off, p.host.bytes.data(), std::min(period_bytes, total - off),
                                 cudaMemcpyHostToDevice));
  MOERUN_CUDA_CHECK(cudaDeviceSynchronize());
}

// GEMV over the whole [kVocab, kHidden] pattern weight for n tokens; checks the sampled rows against a
// double-precision host reference (tolerance: matmul's, relative to sum |w x|).
void check_big_gemv(const DeviceBuffer& w, DType dtype, const Pattern& p, int64_t n, uint64_t seed,
                    cuda::Context& ctx) {
  SCOPED_TRACE(std::string(dtype_name(dtype)) + " n=" + std::to_string(n));
  const std::vector<float> x = uniform(static_cast<size_t>(n * kHidden), -1.0f, 1.0f, seed);
  const DeviceBuffer dx = upload(x), dout = output_with_guard(static_cast<size_t>(n * kVocab));
  cuda::matmul({.out = dout.as<float>(),
                .x = dx.as<float>(),
                .weight = w.data(),
                .weight_dtype = dtype,
                .n = n,
                .in_features = kHidden,
                .out_features = kVocab},
               ctx);
  const std::vector<float> got = download(dout);
  const int64_t row_bytes = kHidden * static_cast<int64_t>(dtype_size(dtype));
  std::vector<int64_t> rows = {0, 1, 2, 3, 4, 5, 4681, kVocab / 2};
  for (const int64_t gb : {int64_t{1} << 30, int64_t{1} << 31}) {  // the rows around each byte boundary
    const int64_t r = gb / row_bytes;
    for (int64_t o = r - 2; o <= r + 2; ++o)
      if (o >= 0 && o < kVocab) rows.push_back(o);
  }
  for (int64_t o = kVocab - 6; o < kVocab; ++o) rows.push_back(o);
  const testing::Tolerance tol = testing::tolerance(testing::Op::matmul, testing::Check::cuda, dtype);
  for (const int64_t o : rows) {
    for (int64_t t = 0; t < n; ++t) {
      double want = 0.0, mag = 0.0;
      for (int64_t i = 0; i < kHidden; ++i) {
        const double v = static_cast<double>(p.host.values[static_cast<size_t>((o * kHidden + i) % kPeriod)]) *
                         x[static_cast<size_t>(t * kHidden + i)];
        want += v;
        mag += std::fabs(v);
      }
      const float g = got[static_cast<size_t>(t * kVocab + o)];
      ASSERT_LE(std::fabs(g - want), tol.at(want, mag)) << "row " << o << " token " << t << " got " << g << " want "
                                                        << want;
    }
  }
  EXPECT_EQ(first_bad_guard(got, static_cast<size_t>(n * kVocab)), -1);
}

TEST(LargeTensorCuda, LmHeadGemvPastOneAndTwoGigabytes) {
  MOERUN_SKIP_WITHOUT_CUDA();
  const size_t bytes = static_cast<size_t>(kVocab * kHidden) * 4;  // the f32 weight; bf16 reuses its first half
  std::string why;
  if (!enough_memory(bytes, why)) GTEST_SKIP() << why;
  cuda::Context ctx;
  const DeviceBuffer w(bytes, "the lm_head-sized test weight");
  {
    const Pattern p = make_pattern(DType::bf16, 11);
    fill(w, p, kVocab * kHidden, 2);
    for (const int64_t n : {1, 3, 8}) {
      check_big_gemv(w, DType::bf16, p, n, 20 + static_cast<uint64_t>(n), ctx);
      if (HasFatalFailure()) return;
    }
    // The embedding of the same table's last rows (and first): a pure widening, exact.
    const std::vector<int32_t> ids = {static_cast<int32_t>(kVocab - 1), 0, static_cast<int32_t>(kVocab - 2)};
    const DeviceBuffer did = upload(ids), dout = output_with_guard(ids.size() * static_cast<size_t>(kHidden));
    cuda::embed({.out = dout.as<float>(),
                 .table = w.data(),
                 .dtype = DType::bf16,
                 .ids = did.as<int32_t>(),
                 .n_tokens = static_cast<int64_t>(ids.size()),
                 .dim = kHidden},
                ctx);
    const std::vector<float> got = download(dout);
    for (size_t t = 0; t < ids.size(); ++t)
      for (int64_t i = 0; i < kHidden; ++i) {
        const float want = p.host.values[static_cast<size_t>((ids[t] * kHidden + i) % kPeriod)];
        ASSERT_EQ(got[t * static_cast<size_t>(kHidden) + static_cast<size_t>(i)], want)
            << "id " << ids[t] << " column " << i;
      }
    EXPECT_EQ(first_bad_guard(got, ids.size() * static_cast<size_t>(kHidden)), -1);
  }
  const Pattern p = make_pattern(DType::f32, 12);
  fill(w, p, kVocab * kHidden, 4);
  for (const int64_t n : {1, 8}) {
    check_big_gemv(w, DType::f32, p, n, 30 + static_cast<uint64_t>(n), ctx);
    if (HasFatalFailure()) return;
  }
}

TEST(LargeTensorCuda, Bf16AtEveryTokenCountAcrossTheGemvBoundary) {
  // n = 1 .. kGemvMaxTokens + 1: every token width the GEMV instantiates (1, 2, 4, 8, with the unused
  // lanes of 3, 5, 6, 7 skipped) and the first cuBLAS n, against the CPU twin.
  MOERUN_SKIP_WITHOUT_CUDA();
  cuda::Context ctx;
  const int64_t in = 2048, out = 1000;
  const HostWeights w = to_dtype(uniform(static_cast<size_t>(in * out), -0.03f, 0.03f, 40), DType::bf16);
  const DeviceBuffer dw = upload(w.bytes);
  cpu::Context cpu_ctx;
  for (int64_t n = 1; n <= cuda::matmul_plan::kGemvMaxTokens + 1; ++n) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const bool tensor = n > cuda::matmul_plan::kGemvMaxTokens;
    std::vector<float> x = uniform(static_cast<size_t>(n * in), -1.0f, 1.0f, 50 + static_cast<uint64_t>(n));
    const DeviceBuffer dx = upload(x), dout = output_with_guard(static_cast<size_t>(n * out));
    cuda::matmul({.out = dout.as<float>(),
                  .x = dx.as<float>(),
                  .weight = dw.data(),
                  .weight_dtype = DType::bf16,
                  .n = n,
                  .in_features = in,
                  .out_features = out},
                 ctx);
    const std::vector<float> got = download(dout);
    // The cuBLAS path multiplies x rounded to bf16: so does the reference there.
    if (tensor)
      for (float& v : x) v = cpu::bf16_to_f32(cpu::f32_to_bf16(v));
    std::vector<float> x_abs(x.size()), w_abs(w.values.size());
    for (size_t i = 0; i < x.size(); ++i) x_abs[i] = std::fabs(x[i]);
    for (size_t i = 0; i < w.values.size(); ++i) w_abs[i] = std::fabs(w.values[i]);
    std::vector<float> want(static_cast<size_t>(n * out)), mag(want.size());
    cpu::matmul({.out = want.data(), .x = x.data(), .weight = w.values.data(), .n = n, .in_features = in,
                 .out_features = out},
                cpu_ctx);
    cpu::matmul({.out = mag.data(), .x = x_abs.data(), .weight = w_abs.data(), .n = n, .in_features = in,
                 .out_features = out},
                cpu_ctx);
    const testing::Tolerance tol = testing::tolerance(
        testing::Op::matmul, tensor ? testing::Check::cuda_tensor : testing::Check::cuda, DType::bf16);
    for (size_t k = 0; k < want.size(); ++k)
      ASSERT_LE(std::fabs(static_cast<double>(got[k]) - want[k]), tol.at(want[k], mag[k]))
          << "t=" << k / static_cast<size_t>(out) << " o=" << k % static_cast<size_t>(out);
    EXPECT_EQ(first_bad_guard(got, want.size()), -1);
  }
}

}  // namespace
}  // namespace moerun
