# Chat-template renderer (src/chat): goldens from transformers, plus focused unit tests.
moerun_add_test(chat_tests chat/golden_test.cpp chat/template_test.cpp chat/content_spans_test.cpp
                 chat/prompt_injection_test.cpp)
