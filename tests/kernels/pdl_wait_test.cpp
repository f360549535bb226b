// Programmatic dependent launch (kernels/cuda/launch.h) is only safe if every kernel we launch waits for
// its predecessors before touching memory. This reads the CUDA sources (no GPU or toolkit needed) and
// checks, with comments and string literals blanked out:
//   - every __global__ function in kernels/cuda/*.cu and *.cuh has MOERUN_PDL_WAIT(); as the first
//     statement of its body;
//   - no triple-chevron launch is left there (every launch goes through launch_kernel, which sets the
//     attribute and is the only place that decides it);
//   - launch.h's MOERUN_PDL_WAIT expands to griddepcontrol.wait on sm_90 and later.
// The checker itself is tested on small sources that must pass and must fail.

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace moerun {
namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The source with comments and string/character literals replaced by spaces (newlines kept).
std::string blank_comments(const std::string& s) {
  std::string out = s;
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, 2, "//") == 0) {
      while (i < s.size() && s[i] != '\n') out[i++] = ' ';
    } else if (s.compare(i, 2, "/*") == 0) {
      size_t end = s.find("*/", i + 2);
      end = end == std::string::npos ? s.size() : end + 2;
      for (; i < end; ++i)
        if (s[i] != '\n') out[i] = ' ';
    } else if (s[i] == '"' || s[i] == '\'') {
      const char q = s[i];
      out[i++] = ' ';
      while (i < s.size() && s[i] != q) {
        if (s[i] == '\\' && i + 1 < s.size()) out[i++] = ' ';
        if (s[i] != '\n') out[i] = ' ';
        ++i;
      }
      if (i < s.size()) out[i++] = ' ';
    } else {
      ++i;
    }
  }
  return out;
}

bool is_ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }

// Problems found in one source: a __global__ whose body does not open with MOERUN_PDL_WAIT();, and
// triple-chevron launches. Each names the line.
std::vector<std::string> pdl_problems(const std::string& source, const std::string& name) {
  const std::string s = blank_comments(source);
  std::vector<std::string> problems;
  auto line_of = [&](size_t pos) {
    return std::to_string(std::count(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(pos), '\n') + 1);
  };
  const std::string kw = "__global__";
  for (size_t pos = s.find(kw); pos != std::string::npos; pos = s.find(kw, pos + kw.size())) {
    if ((pos > 0 && is_ident(s[pos - 1])) || (pos + kw.size() < s.size() && is_ident(s[pos + kw.size()]))) continue;
    // The parameter list: the first '(' after the function's name, i.e. after any __launch_bounds__(...)
    // and template arguments; its matching ')' is followed by the body's '{' (a declaration ends in ';').
    size_t i = pos + kw.size();
    size_t open = std::string::npos;
    while (i < s.size()) {
      const size_t paren = s.find('(', i);
      if (paren == std::string::npos) break;
      // Skip __launch_bounds__(...).
      size_t k = paren;
      while (k > 0 && std::isspace(static_cast<unsigned char>(s[k - 1]))) --k;
      size_t start = k;
      while (start > 0 && is_ident(s[start - 1])) --start;
      if (s.compare(start, k - start, "__launch_bounds__") == 0) {
        int depth = 0;
        size_t j = paren;
        for (; j < s.size(); ++j) {
          if (s[j] == '(') ++depth;
          if (s[j] == ')' && --depth == 0) break;
        }
        i = j + 1;
        continue;
      }
      open = paren;
      break;
    }
    if (open == std::string::npos) {
      problems.push_back(name + ":" + line_of(pos) + ": __global__ without a parameter list");
      continue;
    }
    int depth = 0;
    size_t close = open;
    for (; close < s.size(); ++close) {
      if (s[close] == '(') ++depth;
      if (s[close] == ')' && --depth == 0) break;
    }
    size_t body = close + 1;
    while (body < s.size() && s[body] != '{' && s[body] != ';') ++body;
    if (body >= s.size() || s[body] == ';') continue;  // a declaration: its definition is checked where it is
    size_t first = body + 1;
    while (first < s.size() && std::isspace(static_cast<unsigned char>(s[first]))) ++first;
    const std::string want = "MOERUN_PDL_WAIT();";
    if (s.compare(first, want.size(), want) != 0)
      problems.push_back(name + ":" + line_of(pos) + ": kernel body does not start with MOERUN_PDL_WAIT();");
  }
  for (size_t pos = s.find("<<<"); pos != std::string::npos; pos = s.find("<<<", pos + 3))
    problems.push_back(name + ":" + line_of(pos) + ": <<< launch (use launch_kernel)");
  return problems;
}

TEST(PdlWait, CheckerCatchesMissingWaitsAndChevronLaunches) {
  EXPECT_TRUE(pdl_problems("__global__ void k(int* x) {\n  MOERUN_PDL_WAIT();\n  x[0] = 1;\n}\n", "ok").empty());
  EXPECT_TRUE(pdl_problems("template <int N>\n__global__ void __launch_bounds__(N, 2) k(Args a) {  // grid\n"
                           "  // comment first\n  MOERUN_PDL_WAIT();\n}\n",
                           "ok")
                  .empty());
  EXPECT_TRUE(pdl_problems("// a __global__ in a comment, k<<<1, 1>>>() too\n__global__ void k(int);\n", "ok").empty());
  EXPECT_EQ(pdl_problems("__global__ void k(int* x) {\n  x[0] = 1;\n  MOERUN_PDL_WAIT();\n}\n", "bad").size(), 1u);
  EXPECT_EQ(pdl_problems("__global__ void __launch_bounds__(256) k(const int* __restrict__ x) { const int v = x[0]; }",
                         "bad")
                .size(),
            1u);
  EXPECT_EQ(pdl_problems("void f() { k<<<1, 32, 0, s>>>(x); }", "bad").size(), 1u);
}

TEST(PdlWait, EveryCudaKernelWaitsFirstAndLaunchesThroughTheHelper) {
  const std::filesystem::path dir = std::filesystem::path(MOERUN_SOURCE_DIR) / "kernels" / "cuda";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  int kernels = 0;
  std::vector<std::string> problems;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (ext != ".cu" && ext != ".cuh") continue;
    const std::string text = read_text(entry.path());
    const std::string blanked = blank_comments(text);
    for (size_t p = blanked.find("__global__"); p != std::string::npos; p = blanked.find("__global__", p + 1)) ++kernels;
    for (std::string& problem : pdl_problems(text, entry.path().filename().string())) problems.push_back(problem);
  }
  EXPECT_GE(kernels, 20) << "the CUDA sources were not found where expected";
  for (const std::string& problem : problems) ADD_FAILURE() << problem;

  const std::string launch = read_text(dir / "launch.h");
  EXPECT_NE(launch.find("#define MOERUN_PDL_WAIT() asm volatile(\"griddepcontrol.wait;\" ::: \"memory\")"),
            std::string::npos);
  EXPECT_NE(launch.find("__CUDA_ARCH__ >= 900"), std::string::npos);
}

}  // namespace
}  // namespace moerun
