#include "serve/server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <string_view>

#include "moerun/conversation.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::serve {

using detail::cat;

bool keys_equal(std::string_view presented, std::string_view expected) noexcept {
  // Every byte of the longer string is looked at whatever the contents, so the time taken says
  // nothing about how much of a guess was right.
  const size_t n = std::max(presented.size(), expected.size());
  unsigned diff = presented.size() == expected.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const auto a = static_cast<unsigned char>(i < presented.size() ? presented[i] : 0);
    const auto b = static_cast<unsigned char>(i < expected.size() ? expected[i] : 0);
    diff |= static_cast<unsigned>(a ^ b);
  }
  return diff == 0;
}

namespace {

constexpr std::string_view kJson = "application/json";

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

void send_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), std::string(kJson));
}
void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_body(e)); }

// 400: the request itself is wrong (`param`: the field, or what it made).
ApiError bad_request(std::string message, std::string param, std::string code = "") {
  return {.status = 400, .message = std::move(message), .type = "invalid_request_error", .param = std::move(param), .code = std::move(code)};
}

ApiError loading_error() {
  return {.status = 503, .message = "the model is still loading; retry when GET /health answers 200", .type = "unavailable_error",
          .param = "", .code = "model_loading"};
}

// The port of a socket address (IPv4 or IPv6), or -1.
int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

bool socket_ports(int fd, int& local, int& peer) {
  sockaddr_storage a{}, b{};
  socklen_t la = sizeof a, lb = sizeof b;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &la) != 0 || getpeername(fd, reinterpret_cast<sockaddr*>(&b), &lb) != 0)
    return false;
  local = port_of(a);
  peer = port_of(b);
  return true;
}

// Whether a request's client is still there. httplib hands handlers no descriptor, so the
// connection's socket is found once by its two ports among this process's descriptors, and then
// polled: the peer's FIN (POLLRDHUP) or an error means the client went away, and the scheduler
// cancels its job within a step. A descriptor reused for another connection no longer has the
// same ports and counts as gone.
class ConnectionProbe {
 public:
  ConnectionProbe(int local_port, int peer_port) : local_(local_port), peer_(peer_port) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = -1;
      try {
        fd = std::stoi(e.path().filename().string());
      } catch (...) {
        continue;
      }
      int l = -1, p = -1;
      if (socket_ports(fd, l, p) && l == local_ && p == peer_) {
        fd_ = fd;
        break;
      }
    }
  }
  bool gone() const {
    if (fd_ < 0) return false;  // not found: rely on write errors
    int l = -1, p = -1;
    if (!socket_ports(fd_, l, p) || l != local_ || p != peer_) return true;
    pollfd pf{.fd = fd_, .events = static_cast<short>(POLLIN | POLLRDHUP), .revents = 0};
    if (poll(&pf, 1, 0) < 0) return false;
    return (pf.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

 private:
  int fd_ = -1, local_, peer_;
};

// What a job hands its HTTP thread: text as it comes, then the result.
struct Exchange {
  std::mutex m;
  std::condition_variable cv;
  std::string text;  // not yet sent (stream) / everything (non-stream)
  bool done = false;
  JobResult result;
  std::atomic<bool> gone{false};  // the client went away (a write failed)
};

// Where a request's metrics land: the endpoints by name, anything else as "other" (bounded labels).
std::string endpoint_label(const std::string& path) {
  static const char* const kKnown[] = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics",
                                       "/tokenize", "/detokenize", "/chat/completions", "/completions", "/models"};
  for (const char* k : kKnown)
    if (path == k) return k;
  return "other";
}

}  // namespace

struct Server::Impl {
  ServerOptions o;
  httplib::Server http;
  std::atomic<bool> ready{false};
  std::unique_ptr<ServedModel> model;
  std::unique_ptr<Scheduler> scheduler;
  bool reasoning = false;  // the chat template writes <think> sections
  int64_t created = unix_now();
  std::atomic<uint64_t> next_id{0};
  std::mutex seed_mutex;
  std::mt19937_64 seeds{std::random_device{}()};

  std::mutex counts_mutex;
  std::map<std::pair<std::string, int>, uint64_t> counts;  // (endpoint, status) -> responses

  explicit Impl(ServerOptions options) : o(std::move(options)) {}

  std::string new_id(const char* prefix) { return cat(prefix, created, "-", next_id.fetch_add(1)); }
  uint64_t fresh_seed() {
    const std::lock_guard<std::mutex> lock(seed_mutex);
    return seeds();
  }

  void routes() {
    http.set_payload_max_length(o.max_body_bytes);
    http.set_read_timeout(o.timeout_seconds, 0);
    http.set_write_timeout(o.timeout_seconds, 0);
    // Every request waiting for a slot holds an HTTP thread, so there are enough for the slots,
    // the queue and a few quick requests (health, metrics) beside them.
    const size_t threads = std::min<size_t>(512, static_cast<size_t>(o.scheduler.parallel) + o.scheduler.max_queue + 8);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (o.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      constexpr std::string_view kBearer = "Bearer ";
      const bool ok = auth.size() > kBearer.size() && std::string_view(auth).substr(0, kBearer.size()) == kBearer &&
                      keys_equal(std::string_view(auth).substr(kBearer.size()), o.api_key);
      if (ok) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, {.status = 401, .message = auth.empty() ? "no API key given: send 'Authorization: Bearer KEY'" : "invalid API key",
                       .type = "authentication_error", .param = "", .code = "invalid_api_key"});
      return httplib::Server::HandlerResponse::Handled;
    });
    // Statuses httplib sets itself (404 unknown path, 413 body too large, 400 bad HTTP) get the
    // OpenAI error shape too.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      ApiError e{.status = res.status, .message = "", .type = "invalid_request_error", .param = "", .code = ""};
      if (res.status == 404) {
        e.message = cat("no such endpoint: ", req.method, " ", req.path);
        e.type = "not_found_error";
      } else if (res.status == 413) {
        e.message = cat("the request body is larger than the server's limit of ", o.max_body_bytes, " bytes");
        e.code = "request_too_large";
      } else if (res.status == 405) {
        e.message = cat(req.method, " is not allowed on ", req.path);
      } else {
        e.message = cat("the request could not be read (HTTP ", res.status, ")");
      }
      send_error(res, e);
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, {.status = 500, .message = "internal error: " + what, .type = "server_error", .param = "", .code = ""});
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      const std::lock_guard<std::mutex> lock(counts_mutex);
      ++counts[{endpoint_label(req.path), res.status}];
    });

    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (ready) send_json(res, 200, {{"status", "ok"}});
      else send_json(res, 503, {{"status", "loading"}});
    });
    auto models = [this](const httplib::Request&, httplib::Response& res) {
      if (!ready) return send_error(res, loading_error());
      Json m = {{"id", model->name}, {"object", "model"}, {"created", created}, {"owned_by", "moerun"}};
      send_json(res, 200, {{"object", "list"}, {"data", Json::array({m})}});
    };
    http.Get("/v1/models", models);
    http.Get("/models", models);
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
    });
    auto chat = [this](const httplib::Request& req, httplib::Response& res) { complete(req, res, true); };
    auto text = [this](const httplib::Request& req, httplib::Response& res) { complete(req, res, false); };
    http.Post("/v1/chat/completions", chat);
    http.Post("/chat/completions", chat);
    http.Post("/v1/completions", text);
    http.Post("/completions", text);
    http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); });
    http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); });
  }

  void tokenize(const httplib::Request& req, httplib::Response& res) {
    if (!ready) return send_error(res, loading_error());
    try {
      const TokenizeRequest r = parse_tokenize_request(req.body);
      const std::vector<int32_t> ids = model->tokenizer.encode(r.content, {.add_special_tokens = r.add_special});
      Json tokens = Json::array();
      for (int32_t id : ids) {
        if (r.with_pieces) tokens.push_back({{"id", id}, {"piece", model->tokenizer.decode(std::span<const int32_t>(&id, 1))}});
        else tokens.push_back(id);
      }
      send_json(res, 200, {{"tokens", tokens}});
    } catch (const RequestError& e) {
      send_error(res, e.error());
    } catch (const Error& e) {
      send_error(res, bad_request(e.what(), "content"));
    }
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    if (!ready) return send_error(res, loading_error());
    try {
      const std::vector<int32_t> ids = parse_detokenize_request(req.body);
      const int64_t V = model->engine.config().vocab_size;
      for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || ids[i] >= V)
          return send_error(res, bad_request(cat("token id ", ids[i], " is outside the vocabulary [0, ", V, ")"), cat("tokens[", i, "]")));
      send_json(res, 200, {{"content", model->tokenizer.decode(ids)}});
    } catch (const RequestError& e) {
      send_error(res, e.error());
    }
  }

  // /v1/chat/completions (chat) and /v1/completions: parse, render, queue, then answer at once or
  // stream the text as the scheduler produces it.
  void complete(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (!ready) return send_error(res, loading_error());
    const char* input = chat ? "messages" : "prompt";  // the field an error about the prompt names
    CompletionRequest r;
    std::vector<int32_t> prompt;
    bool opens_thinking = false;
    try {
      r = chat ? parse_chat_request(req.body) : parse_completion_request(req.body);
      if (chat) {
        ConversationOptions co;
        co.parse_special = o.parse_special;
        co.chat.kwargs = r.chat_template_kwargs;
        co.chat.tools = r.tools;
        // OpenAI's "developer" role is the system prompt of newer clients; most templates know only "system".
        for (ChatJson& m : r.messages)
          if (m.contains("role") && m["role"] == "developer") m["role"] = "system";
        Conversation conv(model->tokenizer, model->chat_template, co);
        conv.set_messages(r.messages);
        const bool has_system = std::any_of(r.messages.begin(), r.messages.end(), [](const ChatJson& m) {
          return m.contains("role") && m["role"] == "system";
        });
        if (!o.system.empty() && !has_system) conv.set_system(o.system);
        prompt = conv.prompt_ids();
        // Whether the generation prompt opened a <think> section: its last tokens as text (the
        // prompt was rendered once already; the tail says it without rendering it again).
        if (reasoning) {
          constexpr size_t kTail = 16;
          const std::span<const int32_t> ids(prompt);
          opens_thinking = prompt_opens_reasoning(model->tokenizer.decode(ids.last(std::min(kTail, ids.size()))));
        }
      } else {
        prompt = model->tokenizer.encode(r.prompt);
      }
    } catch (const RequestError& e) {
      return send_error(res, e.error());
    } catch (const Error& e) {
      return send_error(res, bad_request(e.what(), input));
    }
    const int64_t context = scheduler->context();
    if (prompt.empty()) return send_error(res, bad_request("the prompt is empty", input));
    if (static_cast<int64_t>(prompt.size()) > context)
      return send_error(res, bad_request(cat("the prompt is ", prompt.size(), " tokens, more than the ", context,
                                             "-token context of a slot (the server's -c); shorten it"),
                                         input, "context_length_exceeded"));

    auto ex = std::make_shared<Exchange>();
    auto probe = std::make_shared<ConnectionProbe>(req.local_port, req.remote_port);
    Job job;
    job.prompt = std::move(prompt);
    job.sampling = sampler_params(r, model->sampling);
    if (!r.seed) job.sampling.seed = o.random_seed ? fresh_seed() : model->sampling.seed;
    job.max_tokens = r.max_tokens ? *r.max_tokens : o.max_tokens;
    job.stop = r.stop;
    job.stop.insert(job.stop.end(), o.stop.begin(), o.stop.end());
    job.eos_ids = model->eos_ids;
    job.on_text = [ex](std::string_view t) {
      {
        const std::lock_guard<std::mutex> lock(ex->m);
        ex->text += t;
      }
      ex->cv.notify_all();
    };
    job.on_done = [ex](const JobResult& result) {
      {
        const std::lock_guard<std::mutex> lock(ex->m);
        ex->result = result;
        ex->done = true;
      }
      ex->cv.notify_all();
    };
    job.alive = [ex, probe] { return !ex->gone.load() && !probe->gone(); };
    std::shared_ptr<JobControl> control;
    try {
      control = scheduler->submit(std::move(job));
    } catch (const Error& e) {
      return send_error(res, bad_request(e.what(), input));
    }
    if (!control) {
      res.set_header("Retry-After", "1");
      return send_error(res, {.status = 503,
                              .message = cat("the server is busy: ", o.scheduler.parallel, " slots in use and ", o.scheduler.max_queue,
                                             " requests waiting; retry later"),
                              .type = "unavailable_error", .param = "", .code = "server_busy"});
    }
    const std::string id = new_id(chat ? "chatcmpl-" : "cmpl-");
    const std::string name = r.model.empty() ? model->name : r.model;
    const int64_t created_at = unix_now();
    const bool split = chat && reasoning;

    if (!r.stream) {
      std::unique_lock<std::mutex> lock(ex->m);
      ex->cv.wait(lock, [&] { return ex->done; });
      const JobResult& result = ex->result;
      if (result.finish_reason == "error")
        return send_error(res, {.status = 500, .message = "generation failed: " + result.error, .type = "server_error", .param = "", .code = ""});
      const Usage usage{result.prompt_tokens, result.completion_tokens, result.cached_tokens};
      if (!chat)
        return send_json(res, 200, completion_response(id, name, created_at, ex->text, finish_reason(result.finish_reason), usage));
      std::string content = ex->text, thinking;
      if (split) {
        ReasoningSplitter splitter(opens_thinking);
        ReasoningSplitter::Piece a = splitter.push(ex->text), b = splitter.flush();
        content = a.content + b.content;
        thinking = a.reasoning + b.reasoning;
      }
      return send_json(res, 200, chat_response(id, name, created_at, content, thinking, finish_reason(result.finish_reason), usage));
    }

    // Streaming: chunks as text arrives; a failed write (the client left) cancels the job.
    struct StreamState {
      bool started = false;
      ReasoningSplitter splitter;
    };
    auto st = std::make_shared<StreamState>(StreamState{false, ReasoningSplitter(opens_thinking)});
    const bool include_usage = r.include_usage;
    auto chunk = [=](const ChunkDelta& d) {
      return sse_event(chat ? chat_chunk(id, name, created_at, d) : completion_chunk(id, name, created_at, d));
    };
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          std::string text;
          bool done = false;
          JobResult result;
          {
            std::unique_lock<std::mutex> lock(ex->m);
            ex->cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return !ex->text.empty() || ex->done; });
            text.swap(ex->text);
            done = ex->done;
            if (done) result = ex->result;
          }
          std::string out;
          if (!st->started && chat) out += chunk({.role = true, .content = std::string()});
          st->started = true;
          auto add = [&](const ReasoningSplitter::Piece& p) {
            if (!p.reasoning.empty()) out += chunk({.reasoning = p.reasoning});
            if (!p.content.empty()) out += chunk({.content = p.content});
          };
          if (!text.empty()) {
            if (split) add(st->splitter.push(text));
            else out += chunk({.content = text});
          }
          if (done) {
            if (split) add(st->splitter.flush());
            if (result.finish_reason == "error") {
              out += sse_event(error_body({.status = 500, .message = "generation failed: " + result.error, .type = "server_error",
                                           .param = "", .code = ""}));
            } else {
              out += chunk({.finish = finish_reason(result.finish_reason)});
              if (include_usage) out += chunk({.usage = Usage{result.prompt_tokens, result.completion_tokens, result.cached_tokens}});
            }
            out += kSseDone;
          }
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            ex->gone = true;
            control->cancel();
            return false;
          }
          if (done) sink.done();
          return true;
        },
        [ex, control](bool success) {
          if (!success) {  // the connection ended before the stream did
            ex->gone = true;
            control->cancel();
          }
        });
  }

  std::string metrics_text() {
    std::string out;
    auto family = [&](const char* name, const char* type, const char* help) {
      out += cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
    };
    {
      family("moerun_requests_total", "counter", "HTTP responses sent, by endpoint and status code.");
      const std::lock_guard<std::mutex> lock(counts_mutex);
      for (const auto& [key, n] : counts) out += cat("moerun_requests_total{endpoint=\"", key.first, "\",status=\"", key.second, "\"} ", n, "\n");
    }
    const SchedulerMetrics m = scheduler ? scheduler->metrics() : SchedulerMetrics{};
    struct Series {
      const char* name;
      const char* type;
      const char* help;
      uint64_t value;
    };
    const Series single[] = {
        {"moerun_model_loaded", "gauge", "1 once the model is loaded and requests are served.", ready ? 1u : 0u},
        {"moerun_prompt_tokens_total", "counter", "Prompt tokens prefilled (tokens reused from a slot's cache not counted).", m.prompt_tokens},
        {"moerun_prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache.", m.cached_tokens},
        {"moerun_generated_tokens_total", "counter", "Tokens sampled.", m.generated_tokens},
        {"moerun_requests_active", "gauge", "Requests holding a slot.", static_cast<uint64_t>(m.active)},
        {"moerun_requests_queued", "gauge", "Requests waiting for a slot.", static_cast<uint64_t>(m.queued)},
        {"moerun_slots", "gauge", "Slots (--parallel).", static_cast<uint64_t>(m.slots)},
    };
    for (const Series& x : single) {
      family(x.name, x.type, x.help);
      out += cat(x.name, " ", x.value, "\n");
    }
    family("moerun_jobs_total", "counter", "Generation jobs ended, by outcome.");
    out += cat("moerun_jobs_total{outcome=\"finished\"} ", m.finished, "\n");
    out += cat("moerun_jobs_total{outcome=\"cancelled\"} ", m.cancelled, "\n");
    out += cat("moerun_jobs_total{outcome=\"failed\"} ", m.failed, "\n");
    family("moerun_step_seconds", "histogram", "Duration of one batched forward step.");
    for (size_t b = 0; b < std::size(SchedulerMetrics::kStepBuckets); ++b)
      out += cat("moerun_step_seconds_bucket{le=\"", SchedulerMetrics::kStepBuckets[b], "\"} ", m.step_buckets[b], "\n");
    out += cat("moerun_step_seconds_bucket{le=\"+Inf\"} ", m.steps, "\n");
    char sum[64];
    std::snprintf(sum, sizeof sum, "%.6f", m.step_seconds);
    out += cat("moerun_step_seconds_sum ", sum, "\nmoerun_step_seconds_count ", m.steps, "\n");
    return out;
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) { impl_->routes(); }
Server::~Server() {
  stop();
  impl_->scheduler.reset();  // before the model it runs
}

int Server::bind() {
  const int port = impl_->o.port == 0 ? impl_->http.bind_to_any_port(impl_->o.host)
                                      : (impl_->http.bind_to_port(impl_->o.host, impl_->o.port) ? impl_->o.port : -1);
  if (port < 0)
    throw Error("serve", cat("cannot listen on ", impl_->o.host, ":", impl_->o.port, " (in use, or not an address of this machine)"));
  return port;
}

void Server::listen() { impl_->http.listen_after_bind(); }

void Server::set_model(std::unique_ptr<ServedModel> model) {
  impl_->model = std::move(model);
  impl_->reasoning = impl_->model->chat_template && template_has_reasoning(impl_->model->chat_template->source());
  impl_->scheduler = std::make_unique<Scheduler>(impl_->model->engine, impl_->model->tokenizer, impl_->o.scheduler);
  impl_->ready = true;
}

void Server::stop() {
  impl_->ready = false;
  if (impl_->scheduler) impl_->scheduler->cancel_all();  // waiting handlers return at once
  impl_->http.stop();
}

}  // namespace moerun::serve
