#pragma once
// `moerun serve`: the OpenAI-compatible HTTP server (cpp-httplib). It binds first, answers /health
// with 503 while the model loads, then serves /v1/chat/completions, /v1/completions, /v1/models,
// /health, /metrics, /tokenize and /detokenize through the Scheduler (continuous batching over
// --parallel slots). The wire format is api.h; this file moves bytes, checks the API key, limits
// bodies and counts what it answers.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moerun/chat_template.h"
#include "moerun/engine.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"
#include "serve/api.h"
#include "serve/scheduler.h"

namespace moerun::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback: a local model's conversations stay local
  int port = 8080;                 // 0: an ephemeral port (Server::bind says which)
  std::string api_key = "";        // non-empty: "Authorization: Bearer KEY" on every endpoint but /health
  int timeout_seconds = 600;       // HTTP read/write timeout
  size_t max_body_bytes = kDefaultMaxBodyBytes;
  SchedulerOptions scheduler;
  bool random_seed = true;         // requests without "seed" get a fresh one (false: the model's sampling.seed)
  int64_t max_tokens = -1;         // default max_tokens; <= 0: until the slot's context is full
  std::vector<std::string> stop = {};  // stop strings added to every request's
  std::string system = "";         // system prompt for chats that bring none
  bool parse_special = false;      // special-token text in messages becomes control tokens (moerun's --parse-special)
};

// What the server runs, once loaded.
struct ServedModel {
  std::string name;  // /v1/models id (the model directory's name)
  Engine engine;
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;
  std::vector<int32_t> eos_ids;
  SamplerParams sampling;  // defaults for requests that do not say (generation_config.json and the flags)
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; returns the port (the chosen one for port 0). Throws Error when it cannot.
  int bind();
  // Serves on the bound socket until stop(); call on its own thread. Requests that need the model
  // get 503 until set_model().
  void listen();
  // Hands over the loaded model (starts the scheduler); /health turns 200.
  void set_model(std::unique_ptr<ServedModel> model);
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Constant-time comparison of a presented API key with the expected one (no early exit on the
// first differing byte; the length difference is folded in too).
bool keys_equal(std::string_view presented, std::string_view expected) noexcept;

}  // namespace moerun::serve
