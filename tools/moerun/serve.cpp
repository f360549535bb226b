// moerun serve: the OpenAI-compatible HTTP server (src/serve/server.h). It binds first (so clients
// see 503 from /health while the weights load), loads the model, then serves until SIGINT or
// SIGTERM, which cancel what runs and exit cleanly (status 0).

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "cli_io.h"
#include "generation_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "serve/server.h"
#include "validators.h"

namespace moerun::cli {
namespace {

struct ServeFlags {
  GenerationFlags gen;
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 4;
  std::string api_key;
  int timeout = 600;
  size_t max_queue = 64;
  int64_t step_tokens = 512;
  int64_t max_body_mib = 8;
};

int serve(const ServeFlags& f) {
  // A draft model or the MTP layer would be loaded for nothing: the server's batched steps do not
  // speculate yet.
  if (const SpecKind k = f.gen.spec.kind(); k == SpecKind::draft || k == SpecKind::mtp)
    throw Error("serve", "--spec draft and --spec mtp are for run and chat; the server does not speculate yet");
  // A worker rank of a distributed run binds no port: it follows the leader's engine (load_model
  // ends in WorkerDone once the leader is done).
  if (launch_rank() != 0) load_model(f.gen, /*quiet=*/true);
  serve::ServerOptions o;
  o.host = f.host;
  o.port = f.port;
  o.api_key = f.api_key;
  if (o.api_key.empty())
    if (const char* env = std::getenv("MOERUN_API_KEY")) o.api_key = env;
  o.timeout_seconds = f.timeout;
  o.max_body_bytes = static_cast<size_t>(f.max_body_mib) << 20;
  o.scheduler = {.parallel = f.parallel, .context = 0, .step_tokens = std::max<int64_t>(f.step_tokens, f.parallel),
                 .max_queue = f.max_queue};
  o.max_tokens = f.gen.app->count("-n") ? f.gen.max_tokens : -1;
  o.stop = f.gen.stop;
  o.system = f.gen.system;
  o.parse_special = f.gen.parse_special;
  o.random_seed = f.gen.app->count("--seed") == 0;

  // SIGINT and SIGTERM go to one thread that stops the server: blocked here, before any thread
  // starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  serve::Server server(o);
  const int port = server.bind();
  std::atomic<bool> loaded{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (!loaded) {  // nothing to finish yet: leave at once
      std::fprintf(stderr, "\nmoerun serve: %s while loading; exiting\n", sig == SIGINT ? "interrupted" : "terminated");
      std::fflush(stderr);
      _exit(128 + sig);
    }
    std::fprintf(stderr, "moerun serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.stop();
  });
  std::thread http([&] { server.listen(); });
  std::fprintf(stderr, "moerun serve: listening on http://%s:%d\n", o.host.find(':') != std::string::npos ? ("[" + o.host + "]").c_str() : o.host.c_str(),
               port);
  std::fflush(stderr);
  if (o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1")
    std::fprintf(stderr, "moerun serve: warning: --host %s accepts connections from other machines%s\n", o.host.c_str(),
                 o.api_key.empty() ? " and no --api-key is set" : "");

  try {
    LoadedModel m = load_model(f.gen, /*quiet=*/false);
    const SamplerParams sampling = f.gen.sampler_params(m.dir);
    auto served = std::make_unique<serve::ServedModel>(serve::ServedModel{
        std::filesystem::path(m.dir).lexically_normal().filename().string(), std::move(m.engine), std::move(m.tokenizer),
        std::move(m.chat_template), std::move(m.eos_ids), sampling});
    if (served->name.empty()) served->name = "moerun";
    const int64_t ctx = served->engine.default_context();
    server.set_model(std::move(served));
    loaded = true;
    std::fprintf(stderr, "moerun serve: ready: %d slots of %lld tokens; %s\n", f.parallel, static_cast<long long>(ctx),
                 o.api_key.empty() ? "no API key" : "API key required");
    std::fflush(stderr);
  } catch (...) {
    loaded = true;
    server.stop();
    pthread_kill(waiter.native_handle(), SIGTERM);  // (the waiter calls stop() again: harmless)
    http.join();
    waiter.join();
    throw;
  }
  http.join();
  waiter.join();
  std::fprintf(stderr, "moerun serve: stopped\n");
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& root, std::vector<Command>& commands) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* app = root.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching (/v1/chat/completions, ...)");
  f->gen.add_to(app);
  app->add_option("--host", f->host, "address to listen on (default 127.0.0.1: only this machine can connect)");
  app->add_option("--port", f->port, "TCP port; 0 picks a free one (printed on stderr)")->check(integer_in(0, 65535));
  app->add_option("--parallel,-N,--np", f->parallel, "slots: requests served at once, decoded together (default 4)")->check(integer_in(1, 256));
  app->add_option("--api-key", f->api_key, "require 'Authorization: Bearer KEY' on every endpoint but /health (or $MOERUN_API_KEY)");
  app->add_option("--timeout", f->timeout, "HTTP read/write timeout in seconds (default 600)")->check(integer_in(1, 86400));
  app->add_option("--max-queue", f->max_queue, "requests that may wait for a slot; more get 503 with Retry-After (default 64)")
      ->check(integer_in(0, 100000));
  app->add_option("--step-tokens", f->step_tokens,
                  "tokens per batched step, decodes and prompt chunks together: bounds how long a prompt delays the "
                  "slots that stream (default 512)")
      ->check(integer_in(1, 65536));
  app->add_option("--max-body-mib", f->max_body_mib, "largest request body in MiB; larger ones get 413 (default 8)")
      ->check(integer_in(1, 4096));
  app->footer("-c is the context of each slot; -n the default max_tokens; --stop and --system apply to every request; "
              "sampling flags are the defaults a request's fields override.");
  commands.push_back({app, [f] { return serve(*f); }});
}

}  // namespace moerun::cli
