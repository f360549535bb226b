# The tokenizer module (included by the top-level CMakeLists.txt): tokenizer.json pipeline, SentencePiece
# models through libsentencepiece, regexes through Oniguruma, Unicode tables from utf8proc.
# MOERUN_TOKENIZER_SOURCES is also what the fuzz target compiles (with fuzzer instrumentation).
set(MOERUN_TOKENIZER_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/added_tokens.cpp
  ${CMAKE_CURRENT_LIST_DIR}/bpe.cpp
  ${CMAKE_CURRENT_LIST_DIR}/byte_level.cpp
  ${CMAKE_CURRENT_LIST_DIR}/decoders.cpp
  ${CMAKE_CURRENT_LIST_DIR}/json_read.cpp
  ${CMAKE_CURRENT_LIST_DIR}/normalizers.cpp
  ${CMAKE_CURRENT_LIST_DIR}/post_processors.cpp
  ${CMAKE_CURRENT_LIST_DIR}/pre_tokenizers.cpp
  ${CMAKE_CURRENT_LIST_DIR}/regex.cpp
  ${CMAKE_CURRENT_LIST_DIR}/sentencepiece.cpp
  ${CMAKE_CURRENT_LIST_DIR}/stream_decoder.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_json.cpp
  ${CMAKE_CURRENT_LIST_DIR}/unicode.cpp)
target_sources(moerun PRIVATE ${MOERUN_TOKENIZER_SOURCES})
target_link_libraries(moerun PRIVATE PkgConfig::ONIG PkgConfig::UTF8PROC PkgConfig::SENTENCEPIECE)
