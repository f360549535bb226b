// moerun chat: an interactive conversation. On a terminal: libedit line editing and persistent
// history, streamed answers, <think> sections dimmed (or hidden with --hide-think), Ctrl+C stops an
// answer, Ctrl+D exits. Without a terminal it reads one turn per line from stdin and prints plain
// answers, so it can be scripted and tested.
//
// Multi-line input: end a line with a backslash to continue it, or put """ alone on a line to start
// and end a block. The KV cache is reused across turns: only the tokens after the longest common
// prefix of the new prompt and the cached one are prefilled. When the context is full, chat says so
// and /reset starts over (old turns are not dropped silently).

#include <editline/readline.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "generation_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"

namespace moerun::cli {
namespace {

std::atomic<bool> g_interrupted{false};  // set by SIGINT while an answer is being generated

extern "C" void on_sigint(int) { g_interrupted = true; }

constexpr const char* kHelp =
    "commands:\n"
    "  /help                 this text\n"
    "  /reset                forget the conversation (keeps the system prompt)\n"
    "  /system TEXT          set the system prompt and start over\n"
    "  /set KNOB VALUE       temp, top-k, top-p, min-p, repeat-penalty, presence-penalty,\n"
    "                        frequency-penalty, repeat-last-n, seed, n-predict\n"
    "  /stats                tokens and speeds of the last answer, cache use\n"
    "  /save FILE            write the conversation as JSON\n"
    "  /load FILE            read a conversation written by /save\n"
    "  /exit                 leave (Ctrl+D too)\n"
    "input: end a line with \\ to continue it; \"\"\" alone on a line starts and ends a block.\n"
    "Ctrl+C stops the answer being generated.\n";

// Prints answer text, dimming (TTY) or hiding <think>...</think>; holds back a partial tag.
class ThinkFilter {
 public:
  ThinkFilter(bool tty, bool hide) : tty_(tty), hide_(hide) {}

  void write(std::string_view piece) {
    pending_ += piece;
    for (;;) {
      const std::string tag = inside_ ? "</think>" : "<think>";
      const size_t at = pending_.find(tag);
      if (at == std::string::npos) break;
      emit(pending_.substr(0, at));
      if (!inside_ && !hide_ && tty_) std::fputs("\033[2m", stdout);
      if (!hide_) std::fputs(tag.c_str(), stdout);
      if (inside_ && !hide_ && tty_) std::fputs("\033[0m", stdout);
      inside_ = !inside_;
      pending_.erase(0, at + tag.size());
    }
    // Keep a tail that may be the start of the next tag.
    const std::string tag = inside_ ? "</think>" : "<think>";
    size_t keep = 0;
    for (size_t len = std::min(tag.size() - 1, pending_.size()); len > 0; --len)
      if (pending_.compare(pending_.size() - len, len, tag, 0, len) == 0) {
        keep = len;
        break;
      }
    emit(pending_.substr(0, pending_.size() - keep));
    pending_.erase(0, pending_.size() - keep);
    std::fflush(stdout);
  }

  void finish() {
    emit(pending_);
    pending_.clear();
    if (inside_ && tty_ && !hide_) std::fputs("\033[0m", stdout);
    inside_ = false;
    std::fflush(stdout);
  }

 private:
  void emit(const std::string& s) {
    if (!(inside_ && hide_)) std::fwrite(s.data(), 1, s.size(), stdout);
  }
  bool tty_, hide_, inside_ = false;
  std::string pending_;
};

struct Chat {
  LoadedModel m;
  GenerationFlags& flags;
  SamplerParams params;
  Sampler sampler;
  Session session;
  std::vector<int32_t> cached;  // the tokens the session's cache holds
  ChatJson messages = ChatJson::array();
  std::string system;
  bool tty, hide_think;
  GenerateResult last;
  int64_t last_reused = 0;

  Chat(LoadedModel model, GenerationFlags& f, bool is_tty, bool hide)
      : m(std::move(model)), flags(f), params(f.sampler_params(m.dir)), sampler(params),
        session(m.engine, m.engine.default_context()), system(f.system), tty(is_tty), hide_think(hide) {}

  void reset() {
    messages = ChatJson::array();
    session.reset();
    cached.clear();
  }

  std::vector<int32_t> prompt_ids() const {
    ChatJson all = ChatJson::array();
    if (!system.empty()) all.push_back({{"role", "system"}, {"content", system}});
    for (const auto& x : messages) all.push_back(x);
    if (!m.chat_template) {  // no template: the turns as plain text
      std::string text;
      for (const auto& x : all) text += x["content"].get<std::string>() + "\n";
      return m.tokenizer.encode(text);
    }
    return m.tokenizer.encode(m.chat_template->apply(all), {.add_special_tokens = false, .parse_special = true});
  }

  void answer(const std::string& user) {
    messages.push_back({{"role", "user"}, {"content", user}});
    const std::vector<int32_t> ids = prompt_ids();
    if (static_cast<int64_t>(ids.size()) >= session.context()) {
      messages.erase(messages.end() - 1);
      std::fprintf(stderr, "moerun: the conversation (%zu tokens) no longer fits the %lld-token context; /reset starts over\n",
                   ids.size(), static_cast<long long>(session.context()));
      return;
    }
    // Reuse the cache up to the first token where the new prompt differs from what it holds.
    size_t common = 0;
    while (common < cached.size() && common < ids.size() && cached[common] == ids[common]) ++common;
    session.truncate(static_cast<int64_t>(common));
    last_reused = static_cast<int64_t>(common);

    GenerateOptions go;
    go.max_tokens = flags.max_tokens;
    go.stop = flags.stop;
    go.eos_ids = m.eos_ids;
    ThinkFilter out(tty, hide_think);
    g_interrupted = false;
    struct sigaction sa {}, old {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    try {
      last = generate(session, m.tokenizer, sampler, ids, go, [&](std::string_view piece) {
        out.write(piece);
        return !g_interrupted;
      });
    } catch (...) {
      sigaction(SIGINT, &old, nullptr);
      messages.erase(messages.end() - 1);
      throw;
    }
    sigaction(SIGINT, &old, nullptr);
    out.finish();
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (last.finish_reason == "cancelled" && tty) std::fprintf(stderr, "[stopped]\n");
    if (last.finish_reason == "context")
      std::fprintf(stderr, "moerun: the context (%lld tokens) is full; /reset starts over\n",
                   static_cast<long long>(session.context()));
    messages.push_back({{"role", "assistant"}, {"content", last.text}});
    // What the cache holds now: the prompt and every sampled token that was fed back.
    cached = ids;
    cached.insert(cached.end(), last.tokens.begin(), last.tokens.end());
    cached.resize(static_cast<size_t>(session.position()));
  }

  void stats() const {
    std::printf("last answer: %lld new prompt tokens prefilled (%lld reused from the cache) at %.1f t/s; "
                "%lld tokens generated at %.1f t/s (%s)\ncache: %lld of %lld tokens; %zu messages\n",
                static_cast<long long>(last.prompt_tokens), static_cast<long long>(last_reused), last.prompt_tps(),
                static_cast<long long>(last.generated_tokens), last.gen_tps(),
                last.finish_reason.empty() ? "-" : last.finish_reason.c_str(), static_cast<long long>(session.position()),
                static_cast<long long>(session.context()), messages.size());
  }

  void set(const std::string& knob, const std::string& value) {
    SamplerParams p = sampler.params();
    try {
      if (knob == "temp") p.temperature = std::stof(value);
      else if (knob == "top-k") p.top_k = std::stoi(value);
      else if (knob == "top-p") p.top_p = std::stof(value);
      else if (knob == "min-p") p.min_p = std::stof(value);
      else if (knob == "repeat-penalty") p.repeat_penalty = std::stof(value);
      else if (knob == "presence-penalty") p.presence_penalty = std::stof(value);
      else if (knob == "frequency-penalty") p.frequency_penalty = std::stof(value);
      else if (knob == "repeat-last-n") p.penalty_last_n = std::stoi(value);
      else if (knob == "seed") p.seed = std::stoull(value);
      else if (knob == "n-predict") {
        flags.max_tokens = std::stoll(value);
        if (flags.max_tokens <= 0) throw std::invalid_argument("n-predict");
        return;
      } else {
        std::fprintf(stderr, "unknown knob '%s' (see /help)\n", knob.c_str());
        return;
      }
    } catch (const std::logic_error&) {
      std::fprintf(stderr, "bad value '%s' for %s\n", value.c_str(), knob.c_str());
      return;
    }
    sampler.set_params(p);  // validates; throws Error on nonsense
  }

  void save(const std::string& file) const {
    std::ofstream out(file);
    const ChatJson j = {{"system", system}, {"messages", messages}};
    out << j.dump(2) << "\n";
    if (!out) throw Error(file, "cannot write");
  }

  void load(const std::string& file) {
    std::ifstream in(file);
    if (!in) throw Error(file, "cannot open");
    ChatJson j;
    try {
      j = ChatJson::parse(in);
    } catch (const ChatJson::exception& e) {
      throw Error(file, std::string("not a conversation: ") + e.what());
    }
    if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array())
      throw Error(file, "not a conversation (expected {\"system\": ..., \"messages\": [...]})");
    reset();
    messages = j["messages"];
    system = j.value("system", std::string());
  }

  // Returns false to leave.
  bool command(const std::string& line) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    std::string rest;
    std::getline(in, rest);
    if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
    if (cmd == "/exit" || cmd == "/quit") return false;
    if (cmd == "/help") std::fputs(kHelp, stdout);
    else if (cmd == "/reset") reset();
    else if (cmd == "/system") {
      system = rest;
      reset();
    } else if (cmd == "/set") {
      std::istringstream kv(rest);
      std::string knob, value;
      kv >> knob >> value;
      set(knob, value);
    } else if (cmd == "/stats") stats();
    else if (cmd == "/save") save(rest);
    else if (cmd == "/load") load(rest);
    else std::fprintf(stderr, "unknown command %s (see /help)\n", cmd.c_str());
    return true;
  }
};

// Reads one user turn (with continuations and """ blocks); false at end of input.
bool read_turn(bool tty, std::string& turn) {
  turn.clear();
  bool block = false, more = false;
  for (;;) {
    std::string line;
    if (tty) {
      char* raw = readline(block || more ? "... " : "> ");
      if (!raw) return !turn.empty();
      line = raw;
      std::free(raw);
    } else if (!std::getline(std::cin, line)) {
      return !turn.empty();
    }
    if (line == "\"\"\"") {
      if (block) return true;
      block = true;
      continue;
    }
    more = !block && !line.empty() && line.back() == '\\';
    if (more) line.pop_back();
    if (!turn.empty()) turn += "\n";
    turn += line;
    if (!block && !more) return true;
  }
}

}  // namespace

void add_chat_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    GenerationFlags gen;
    bool hide_think = false;
    std::string history;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("chat", "Chat with a model in the terminal (or line by line from a pipe)");
  opt->gen.add_to(app);
  app->add_flag("--hide-think", opt->hide_think, "do not show <think>...</think> sections");
  app->add_option("--history", opt->history, "history file (default: ~/.moerun_history)");
  commands.push_back({app, [opt] {
    const bool tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    Chat chat(load_model(opt->gen, /*quiet=*/!tty), opt->gen, tty, opt->hide_think);
    std::string history = opt->history;
    if (history.empty()) {
      const char* home = std::getenv("HOME");
      history = std::string(home ? home : ".") + "/.moerun_history";
    }
    if (tty) {
      using_history();
      read_history(history.c_str());
      std::fprintf(stderr, "# %s: /help for commands, Ctrl+D to leave\n", chat.m.dir.c_str());
    }
    std::string turn;
    while (read_turn(tty, turn)) {
      if (turn.empty()) continue;
      if (tty) {
        add_history(turn.c_str());
        write_history(history.c_str());
      }
      try {
        if (turn[0] == '/') {
          if (!chat.command(turn)) break;
        } else {
          chat.answer(turn);
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "moerun: %s\n", e.what());
        if (!tty) return 1;  // a script should see the failure
      }
    }
    return 0;
  }});
}

}  // namespace moerun::cli
