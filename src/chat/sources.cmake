# The chat-template renderer: a Jinja2 interpreter for the subset Hugging Face chat templates use.
target_sources(moerun PRIVATE
  src/chat/unicode.cpp
  src/chat/value.cpp
  src/chat/text.cpp
  src/chat/json.cpp
  src/chat/lexer.cpp
  src/chat/ast.cpp
  src/chat/parser.cpp
  src/chat/operations.cpp
  src/chat/filters.cpp
  src/chat/interpreter.cpp
  src/chat/chat_template.cpp)
# include/moerun/chat_template.h takes conversations as nlohmann::ordered_json.
target_link_libraries(moerun PUBLIC nlohmann_json::nlohmann_json PRIVATE PkgConfig::UTF8PROC)
