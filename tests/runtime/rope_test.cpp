// RoPE frequency tables (src/runtime/rope.cpp) against the formulas of docs/MODELS.md §2.3, §2.5 and
// the DeepSeek YaRN numbers of §5, each computed here in double. The table is built in fp32 as HF does
// (fp32 pow of an fp32 exponent), so the tolerance is ~1e-6 relative: the exponent 2i/d rounded to fp32
// is off by <= 2^-25 relative, times ln(theta) <= 13 for theta = 500000, plus two fp32 roundings.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/rope.h"

namespace moerun::runtime {
namespace {

constexpr double kTableTol = 1e-6;  // relative, per inv_freq entry (see above)

// NaN/Inf first, then the relative error.
::testing::AssertionResult rel_close(double got, double want, double rel) {
  if (!std::isfinite(got)) return ::testing::AssertionFailure() << "got " << got << " (want " << want << ")";
  const double err = std::fabs(got - want);
  if (err <= rel * std::fabs(want)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want << ", relative error " << err / std::fabs(want)
                                       << " > " << rel;
}

// theta_i = 1 / base^(2i/d), in double.
double theta(double base, int64_t d, int64_t i) { return std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d)); }

RopeSpec spec(int64_t dim, double base, RopeType type = RopeType::none) {
  RopeSpec s;
  s.dim = dim;
  s.theta = base;
  s.scaling.type = type;
  return s;
}

// m(F, mu) = 1 if F <= 1 else 0.1 mu ln F + 1 (docs/MODELS.md §2.5).
double yarn_m(double factor, double mscale) { return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

TEST(RopeTable, DefaultIsInverseThetaPower) {
  for (double base : {10000.0, 500000.0, 1e6}) {
    for (int64_t d : {2, 6, 14, 64, 66, 128}) {
      const RopeTable t = rope_table(spec(d, base), 4096, 1);
      ASSERT_EQ(t.inv_freq.size(), static_cast<size_t>(d / 2)) << "d " << d;
      EXPECT_EQ(t.attention_factor, 1.0f);
      EXPECT_EQ(t.inv_freq[0], 1.0f);  // i = 0: base^0
      for (int64_t i = 0; i < d / 2; ++i)
        EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], theta(base, d, i), kTableTol)) << "base " << base << " d " << d << " i " << i;
    }
  }
}

TEST(RopeTable, LinearDividesByFactor) {
  RopeSpec s = spec(14, 10000.0, RopeType::linear);
  s.scaling.factor = 4.0;
  const RopeTable t = rope_table(s, 2048, 1);
  ASSERT_EQ(t.inv_freq.size(), 7u);
  EXPECT_EQ(t.attention_factor, 1.0f);
  for (int64_t i = 0; i < 7; ++i) EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], theta(10000.0, 14, i) / 4.0, kTableTol)) << "i " << i;
}

TEST(RopeTable, Llama3KeepsShortScalesLongAndBlendsMedium) {
  // Llama-3.1: factor 8, low_freq_factor 1, high_freq_factor 4, original 8192, theta 500000, d 128.
  const double f = 8.0, lo = 1.0, hi = 4.0, L0 = 8192.0, base = 500000.0;
  const int64_t d = 128;
  RopeSpec s = spec(d, base, RopeType::llama3);
  s.scaling.factor = f;
  s.scaling.low_freq_factor = lo;
  s.scaling.high_freq_factor = hi;
  s.scaling.original_max_position_embeddings = static_cast<int64_t>(L0);
  const RopeTable t = rope_table(s, 131072, 1);
  ASSERT_EQ(t.inv_freq.size(), 64u);
  EXPECT_EQ(t.attention_factor, 1.0f);
  const double wl_lo = L0 / lo, wl_hi = L0 / hi;  // 8192, 2048
  int n_short = 0, n_long = 0, n_medium = 0;
  for (int64_t i = 0; i < d / 2; ++i) {
    const double th = theta(base, d, i), wavelen = 2.0 * M_PI / th;
    double want;
    std::string kind;
    if (wavelen < wl_hi) {
      want = th, kind = "short";
      ++n_short;
    } else if (wavelen > wl_lo) {
      want = th / f, kind = "long";
      ++n_long;
    } else {
      const double g = (L0 / wavelen - lo) / (hi - lo);
      want = (1.0 - g) * th / f + g * th, kind = "medium";
      ++n_medium;
    }
    EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], want, kTableTol)) << kind << " i " << i << " wavelength " << wavelen;
  }
  // The three regimes are all exercised (29 short, 6 medium, 29 long for these numbers).
  EXPECT_EQ(n_short, 29);
  EXPECT_EQ(n_medium, 6);
  EXPECT_EQ(n_long, 29);
}

RopeSpec deepseek_yarn() {
  // docs/MODELS.md §5: d 64, theta 10000, original 4096, factor 40, beta_fast 32, beta_slow 1.
  RopeSpec s = spec(64, 10000.0, RopeType::yarn);
  s.style = RopeStyle::interleaved;
  s.scaling.factor = 40.0;
  s.scaling.original_max_position_embeddings = 4096;
  s.scaling.beta_fast = 32.0;
  s.scaling.beta_slow = 1.0;
  s.scaling.mscale = 1.0;
  s.scaling.mscale_all_dim = 1.0;
  return s;
}

TEST(RopeTable, YarnDeepSeekRamp) {
  const RopeTable t = rope_table(deepseek_yarn(), 163840, 1);
  ASSERT_EQ(t.inv_freq.size(), 32u);
  for (int64_t i = 0; i < 32; ++i) {
    const double th = theta(10000.0, 64, i);
    // lo = floor(10.47) = 10, hi = ceil(22.51) = 23: keep theta_i up to 10, theta_i / 40 from 23, ramp
    // (i - 10) / 13 in between.
    const double ramp = std::clamp((static_cast<double>(i) - 10.0) / 13.0, 0.0, 1.0);
    const double want = th * (1.0 - ramp) + th / 40.0 * ramp;
    EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], want, kTableTol)) << "i " << i << " ramp " << ramp;
    if (i <= 10) {
      EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], th, kTableTol)) << "i " << i << " keeps theta_i";
    }
    if (i >= 23) {
      EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], th / 40.0, kTableTol)) << "i " << i << " is fully interpolated";
    }
  }
  EXPECT_EQ(t.attention_factor, 1.0f);  // mscale == mscale_all_dim (V3: 1.0 / 1.0)
}

TEST(RopeTable, YarnWithoutTruncationUsesTheExactCorrectionRange) {
  RopeSpec s = deepseek_yarn();
  s.scaling.truncate = false;
  const RopeTable t = rope_table(s, 163840, 1);
  auto corr = [](double rotations) { return 64.0 * std::log(4096.0 / (rotations * 2.0 * M_PI)) / (2.0 * std::log(10000.0)); };
  const double lo = corr(32.0), hi = corr(1.0);
  EXPECT_NEAR(lo, 10.472, 1e-3);  // §5's numbers, to make sure the reference itself is right
  EXPECT_NEAR(hi, 22.513, 1e-3);
  for (int64_t i = 0; i < 32; ++i) {
    const double th = theta(10000.0, 64, i);
    const double ramp = std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
    EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], th * (1.0 - ramp) + th / 40.0 * ramp, kTableTol)) << "i " << i;
  }
}

// docs/MODELS.md §2.5 YaRN inv_freq in double; lo and hi returned for the test to check.
std::vector<double> yarn_ref(int64_t d, double base, double orig, double factor, double beta_fast, double beta_slow,
                             bool truncate, double& lo, double& hi) {
  auto corr = [&](double r) { return static_cast<double>(d) * std::log(orig / (r * 2.0 * M_PI)) / (2.0 * std::log(base)); };
  lo = corr(beta_fast);
  hi = corr(beta_slow);
  if (truncate) {
    lo = std::floor(lo);
    hi = std::ceil(hi);
  }
  lo = std::max(lo, 0.0);
  hi = std::min(hi, static_cast<double>(d - 1));
  if (lo == hi) hi += 0.001;
  std::vector<double> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    const double keep = 1.0 - std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
    const double th = theta(base, d, i);
    f[static_cast<size_t>(i)] = th * keep + th / factor * (1.0 - keep);
  }
  return f;
}

TEST(RopeTable, YarnQwen3LongContext) {
  // Qwen3 with YaRN (d 128, theta 1e6, original 32768, factor 4, no mscale): corr(32) = 23.60 floors to
  // 23 (rounding would give 24), corr(1) = 39.65 ceils to 40; a = 0.1 ln 4 + 1.
  for (bool truncate : {true, false}) {
    RopeSpec s = spec(128, 1e6, RopeType::yarn);
    s.scaling.factor = 4.0;
    s.scaling.original_max_position_embeddings = 32768;
    s.scaling.truncate = truncate;
    const RopeTable t = rope_table(s, 131072, 1);
    double lo = 0.0, hi = 0.0;
    const std::vector<double> want = yarn_ref(128, 1e6, 32768.0, 4.0, 32.0, 1.0, truncate, lo, hi);
    if (truncate) {
      EXPECT_EQ(lo, 23.0);
      EXPECT_EQ(hi, 40.0);
    }
    ASSERT_EQ(t.inv_freq.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_TRUE(rel_close(t.inv_freq[i], want[i], kTableTol)) << "truncate " << truncate << " i " << i;
    EXPECT_TRUE(rel_close(t.attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-6));
  }
}

TEST(RopeTable, YarnAttentionFactor) {
  struct Case {
    double mscale, mscale_all_dim;
    double want;
    const char* what;
  };
  const Case cases[] = {
      {1.0, 1.0, 1.0, "V3: 1.0 / 1.0"},
      {0.707, 0.707, 1.0, "V2-Lite: 0.707 / 0.707"},
      {1.0, 0.707, yarn_m(40.0, 1.0) / yarn_m(40.0, 0.707), "m(F, 1.0) / m(F, 0.707)"},
      {0.707, 1.0, yarn_m(40.0, 0.707) / yarn_m(40.0, 1.0), "m(F, 0.707) / m(F, 1.0)"},
      {0.0, 0.0, 0.1 * std::log(40.0) + 1.0, "mscale absent: 0.1 ln F + 1"},
      {1.0, 0.0, 0.1 * std::log(40.0) + 1.0, "mscale_all_dim absent: m(F, 1)"},
  };
  for (const Case& c : cases) {
    RopeSpec s = deepseek_yarn();
    s.scaling.mscale = c.mscale;
    s.scaling.mscale_all_dim = c.mscale_all_dim;
    const RopeTable t = rope_table(s, 163840, 1);
    EXPECT_TRUE(rel_close(t.attention_factor, c.want, 1e-6)) << c.what;
  }
  // §5's printed values, as a check on the reference formula.
  EXPECT_NEAR(yarn_m(40.0, 1.0), 1.368888, 1e-6);
  EXPECT_NEAR(yarn_m(40.0, 0.707), 1.260804, 1e-6);

  // An explicit attention_factor wins over mscale / mscale_all_dim.
  RopeSpec s = deepseek_yarn();
  s.scaling.mscale = 1.0;
  s.scaling.mscale_all_dim = 0.707;
  s.scaling.attention_factor = 0.8125;
  EXPECT_EQ(rope_table(s, 163840, 1).attention_factor, 0.8125f);
  s.scaling.mscale = 0.0;
  s.scaling.mscale_all_dim = 0.0;
  EXPECT_EQ(rope_table(s, 163840, 1).attention_factor, 0.8125f);

  // factor <= 1: m = 1, so the factor is 1 with mscale absent.
  RopeSpec one = deepseek_yarn();
  one.scaling.factor = 1.0;
  one.scaling.mscale = 0.0;
  one.scaling.mscale_all_dim = 0.0;
  EXPECT_EQ(rope_table(one, 4096, 1).attention_factor, 1.0f);
}

TEST(RopeTable, DynamicNtkGrowsTheBaseOnlyPastTheTrainedContext) {
  const int64_t d = 64, max_pos = 2048;
  const double base = 10000.0, factor = 2.0;
  RopeSpec s = spec(d, base, RopeType::dynamic);
  s.scaling.factor = factor;
  for (int64_t seq_len : {int64_t{1}, int64_t{1000}, max_pos}) {
    const RopeTable t = rope_table(s, max_pos, seq_len);
    ASSERT_EQ(t.inv_freq.size(), 32u);
    EXPECT_EQ(t.attention_factor, 1.0f);
    for (int64_t i = 0; i < d / 2; ++i)
      EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], theta(base, d, i), kTableTol)) << "seq_len " << seq_len << " i " << i;
  }
  for (int64_t seq_len : {max_pos + 1, 3 * max_pos, 8 * max_pos + 7}) {
    // HF _compute_dynamic_ntk_parameters: base' = base * (F L / L_max - (F - 1))^(d / (d - 2)).
    const double grown = base * std::pow(factor * static_cast<double>(seq_len) / static_cast<double>(max_pos) - (factor - 1.0),
                                         static_cast<double>(d) / static_cast<double>(d - 2));
    const RopeTable t = rope_table(s, max_pos, seq_len);
    ASSERT_EQ(t.inv_freq.size(), 32u);
    EXPECT_EQ(t.attention_factor, 1.0f);
    for (int64_t i = 0; i < d / 2; ++i)
      EXPECT_TRUE(rel_close(t.inv_freq[static_cast<size_t>(i)], theta(grown, d, i), 2 * kTableTol)) << "seq_len " << seq_len << " i " << i;
    if (seq_len > max_pos + 1) {
      EXPECT_LT(t.inv_freq[31], static_cast<float>(theta(base, d, 31))) << "seq_len " << seq_len << ": frequencies must shrink";
    }
  }
}

}  // namespace
}  // namespace moerun::runtime
