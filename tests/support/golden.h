#pragma once
// The golden models of tests/data/golden (made by tools/golden/make_goldens.py from Hugging Face
// transformers): where they are, how their expected logits are read, and the comparisons every
// suite that checks logits uses. Header-only: MOERUN_TEST_DATA is defined per test target.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "moerun/error.h"
#include "moerun/tensor.h"

namespace moerun::testing {

// $MOERUN_TEST_DATA overrides the checkout's tests/data (a build run on another machine, as
// scripts/gpu-check.sh does on the GPU machine).
inline std::filesystem::path test_data_dir() {
  const char* env = std::getenv("MOERUN_TEST_DATA");
  return env && *env ? std::filesystem::path(env) : std::filesystem::path(MOERUN_TEST_DATA);
}

inline std::filesystem::path golden_dir(const std::string& name) { return test_data_dir() / "golden" / name; }

struct Golden {
  std::vector<std::vector<int32_t>> ids;   // prompts of lengths 1, 7, 33
  std::vector<std::vector<float>> logits;  // [n, V] each
  std::vector<int32_t> greedy;             // 16 tokens after ids[1]
  std::string transformers;
};

template <class T>
std::vector<T> read_tensor(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorEntry* e = f.find(name);
  if (!e) throw Error(f.path().string(), "golden tensor '" + name + "' missing");
  const Tensor t = f.tensor(*e);
  std::vector<T> out(static_cast<size_t>(t.numel()));
  std::memcpy(out.data(), t.data(), t.nbytes());
  return out;
}

inline Golden read_golden(const std::string& name) {
  const auto f = io::SafetensorsFile::open(golden_dir(name) / "golden.safetensors");
  Golden g;
  for (int n : {1, 7, 33}) {
    g.ids.push_back(read_tensor<int32_t>(*f, "ids_" + std::to_string(n)));
    g.logits.push_back(read_tensor<float>(*f, "logits_" + std::to_string(n)));
  }
  g.greedy = read_tensor<int32_t>(*f, "greedy");
  g.transformers = f->header().metadata.at("transformers");
  return g;
}

// Largest |a - b|; infinite when a has a non-finite entry or the sizes differ.
inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    m = std::max(m, std::fabs(a[i] - b[i]));
  }
  return m;
}

inline int32_t argmax(const float* v, int64_t n) { return static_cast<int32_t>(std::max_element(v, v + n) - v); }

// Against HF's own bf16 arithmetic (rounding after every GEMM, norm and residual add, MODELS.md §7)
// only closeness can be asked: a rounding can flip an expert choice near a tie, which moves that
// position's logits by O(1). So: at least 80% of positions within 0.1 (a few bf16 ulps of logits
// of magnitude ~4; the rest are waived as flipped routes), and at those positions the same top
// token wherever HF's top two are further apart than that.
struct Closeness {
  int positions = 0, close = 0, top1_checked = 0, top1_same = 0;
  float worst_close = 0.0f;

  Closeness& operator+=(const Closeness& o) {  // counts over several prompts
    positions += o.positions;
    close += o.close;
    top1_checked += o.top1_checked;
    top1_same += o.top1_same;
    worst_close = std::max(worst_close, o.worst_close);
    return *this;
  }
};

inline Closeness closeness(const std::vector<float>& got, const std::vector<float>& want, int64_t V) {
  constexpr float kClose = 0.1f;
  Closeness c;
  for (size_t t = 0; t * V < want.size(); ++t) {
    const float* g = got.data() + t * V;
    const float* w = want.data() + t * V;
    float err = 0.0f;
    for (int64_t i = 0; i < V; ++i) err = std::max(err, std::fabs(g[i] - w[i]));
    ++c.positions;
    if (err > kClose) continue;  // waived: a flipped route
    ++c.close;
    c.worst_close = std::max(c.worst_close, err);
    std::vector<float> sorted(w, w + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
    if (sorted[0] - sorted[1] > kClose) {
      ++c.top1_checked;
      c.top1_same += argmax(g, V) == argmax(w, V);
    }
  }
  return c;
}

// The bf16 closeness rule: at least 80% of positions within 0.1 and the same top token at every
// decisive one; prints the counts.
inline void expect_close_to_bf16_reference(const Closeness& c, const char* what) {
  EXPECT_GE(c.close * 5, c.positions * 4) << what << ": " << c.close << " of " << c.positions << " positions within 0.1";
  EXPECT_EQ(c.top1_same, c.top1_checked) << what;
  std::printf("[golden] %s: %d of %d positions within 0.1 (worst of those %.3g), top-1 same at %d of %d decisive positions\n",
              what, c.close, c.positions, c.worst_close, c.top1_same, c.top1_checked);
}

}  // namespace moerun::testing
