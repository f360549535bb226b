// The server in-process (bound to an ephemeral loopback port, driven with cpp-httplib's client):
// a reasoning model's chat template (DeepSeek-R1's, whose generation prompt opens a <think>
// section) sends the thinking to reasoning_content, streamed and not; /health is 503 until the
// model is handed over. The default model, wearing DeepSeek-R1's chat template.

#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <string>
#include <thread>

#include "moerun/chat_template.h"
#include "moerun/engine.h"
#include "serve/server.h"

namespace moerun::serve {
namespace {

namespace fs = std::filesystem;

const fs::path kTokenizerDir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";

class RunningServer {
 public:
  explicit RunningServer(ServerOptions o) : server_(std::move(o)) {
    port_ = server_.bind();
    thread_ = std::thread([this] { server_.listen(); });
  }
  ~RunningServer() {
    server_.stop();
    thread_.join();
  }
  Server& server() { return server_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }

 private:
  Server server_;
  int port_ = 0;
  std::thread thread_;
};

// The data: payloads of an SSE body.
std::vector<Json> events(const std::string& body) {
  std::vector<Json> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string payload = body.substr(at + 6, end - at - 6);
    if (payload != "[DONE]") out.push_back(Json::parse(payload));
    at = end;
  }
  return out;
}

TEST(Server, ReasoningGoesToReasoningContentAndHealthWaitsForTheModel) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "135M parameters through the scalar reference path take minutes under sanitizers";
#endif
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)";
  RunningServer rs({.port = 0, .scheduler = {.parallel = 2, .context = 256, .step_tokens = 64, .max_queue = 4}, .max_tokens = 12});
  httplib::Client c = rs.client();
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  auto early = c.Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", "application/json");
  ASSERT_TRUE(early);
  EXPECT_EQ(early->status, 503);
  EXPECT_EQ(Json::parse(early->body)["error"]["code"], "model_loading");

  const fs::path r1 = fs::path(MOERUN_TEST_DATA) / "chat" / "models" / "deepseek_r1";
  auto model = std::make_unique<ServedModel>(ServedModel{"default-as-r1", Engine::load(kTokenizerDir, {.backend = BackendKind::cpu}),
                                                         Tokenizer::load(kTokenizerDir), ChatTemplate::load(r1), {}, {.temperature = 0.0f}});
  rs.server().set_model(std::move(model));
  health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  const std::string body = R"({"model": "x", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "temperature": 0)";
  auto plain = c.Post("/v1/chat/completions", body + "}", "application/json");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  const Json answer = Json::parse(plain->body);
  const Json& message = answer["choices"][0]["message"];
  // R1's generation prompt ends inside <think>: with no </think> in 12 tokens it is all thinking.
  ASSERT_TRUE(message.contains("reasoning_content")) << plain->body;
  const std::string thinking = message["reasoning_content"];
  EXPECT_FALSE(thinking.empty());
  EXPECT_EQ(message["content"], "");
  EXPECT_EQ(answer["usage"]["completion_tokens"], 12);

  auto streamed = c.Post("/v1/chat/completions", body + R"(, "stream": true})", "application/json");
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200);
  std::string reasoning, content;
  for (const Json& e : events(streamed->body)) {
    if (e["choices"].empty()) continue;
    const Json& delta = e["choices"][0]["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"].get<std::string>();
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, thinking);
  EXPECT_EQ(content, "");
}

}  // namespace
}  // namespace moerun::serve
