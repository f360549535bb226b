# Tokenizer suites (included from tests/CMakeLists.txt).
moerun_add_test(tokenizer_tests
  tokenizer/golden_test.cpp
  tokenizer/component_goldens_test.cpp
  tokenizer/components_test.cpp
  tokenizer/errors_test.cpp
  tokenizer/plain_spans_test.cpp
  tokenizer/sentencepiece_test.cpp
  tokenizer/stream_decoder_test.cpp
  tokenizer/tokenizer_dir_test.cpp)
# The sentencepiece test compares our decoding with the library's own.
target_link_libraries(tokenizer_tests PRIVATE PkgConfig::SENTENCEPIECE)

# Encode throughput (not a test; run it from a Release build).
add_executable(tokenizer_bench tokenizer/encode_bench.cpp)
target_link_libraries(tokenizer_bench PRIVATE moerun moerun_warnings benchmark::benchmark nlohmann_json::nlohmann_json)
target_compile_definitions(tokenizer_bench PRIVATE MOERUN_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data")
