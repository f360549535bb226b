#pragma once
// The x86 instruction sets the CPU kernels have their own code for, picked once at run time (the
// library itself is compiled for baseline x86-64; each fast file carries target attributes).

#include <cstdint>

namespace moerun::cpu::detail {

// avx512 needs F, BW, VL, DQ and VNNI (Ice Lake, Zen 4 and later); avx2 needs AVX2, FMA and F16C
// (Haswell and later).
enum class Isa : uint8_t { scalar, avx2, avx512 };

Isa best_isa() noexcept;  // the best this CPU has; MOERUN_CPU_ISA=scalar|avx2 in the environment caps it
const char* isa_name(Isa isa) noexcept;

}  // namespace moerun::cpu::detail
