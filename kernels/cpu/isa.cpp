#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <string_view>

namespace moerun::cpu::detail {
namespace {

Isa detect_isa() noexcept {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  Isa best = Isa::scalar;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    best = Isa::avx512;
  // A cap for measuring the fallbacks on a newer CPU (it can only lower the choice).
  if (const char* cap = std::getenv("MOERUN_CPU_ISA")) {
    const std::string_view s(cap);
    if (s == "scalar") best = Isa::scalar;
    else if (s == "avx2" && best == Isa::avx512) best = Isa::avx2;
  }
  return best;
#else
  return Isa::scalar;
#endif
}

}  // namespace

Isa best_isa() noexcept {
  static const Isa isa = detect_isa();
  return isa;
}

const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace moerun::cpu::detail
