// libFuzzer target: any byte string as a whole safetensors file. The header parser and validator must
// either accept it or throw moerun::Error; any other exception, crash, leak, hang or sanitizer report
// is a finding. Built only with clang (-DMOERUN_FUZZ=ON, see scripts/fuzz.sh).

#include <cstddef>
#include <cstdint>
#include <span>

#include "io/safetensors.h"
#include "moerun/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const moerun::io::SafetensorsHeader h = moerun::io::parse_safetensors_header(bytes, "fuzz.safetensors");
    // Accepted headers must describe tensors that lie inside the input: touch every first and last byte.
    volatile uint8_t sink = 0;
    for (const moerun::io::TensorEntry& e : h.tensors)
      if (e.end > e.begin) {
        sink = sink ^ data[8 + h.header_size + e.begin] ^ data[8 + h.header_size + e.end - 1];
      }
    (void)sink;
  } catch (const moerun::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
