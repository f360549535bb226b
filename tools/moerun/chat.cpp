// moerun chat: an interactive conversation. On a terminal: libedit line editing and persistent
// history, streamed answers, <think> sections dimmed (or hidden with --hide-think), Ctrl+C stops an
// answer, Ctrl+D exits. Without a terminal it reads one turn per line from stdin and prints plain
// answers, so it can be scripted and tested.
//
// Multi-line input: end a line with a backslash to continue it, or put """ alone on a line to start
// and end a block. The conversation (messages, system prompt, prompt ids, KV-cache reuse across
// turns: only the tokens after the longest common prefix of the new prompt and the cached one are
// prefilled) is a moerun::Conversation. When the context is full, chat says so and /reset starts
// over (old turns are not dropped silently).

#include <editline/readline.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

#include "cli_io.h"
#include "generation_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "validators.h"

namespace moerun::cli {
namespace {

// Keys typed since the prompt appeared (libedit reads them through key_typed), so Ctrl+C can tell
// a line being cleared from a second Ctrl+C on an empty line.
bool g_typed = false;

extern "C" int key_typed(FILE* in) {
  unsigned char c = 0;
  const ssize_t n = ::read(fileno(in), &c, 1);
  if (n != 1) return EOF;  // a signal (EINTR) or the end of input: readline returns null
  g_typed = true;
  return c;
}

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
    "Ctrl+C stops the answer being generated, or clears the line; Ctrl+C on an empty line or Ctrl+D leaves.\n";

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
      if (!inside_ && !hide_ && tty_) write_out("\033[2m");
      if (!hide_) write_out(tag);
      if (inside_ && !hide_ && tty_) write_out("\033[0m");
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
    write_out("", /*flush=*/true);
  }

  void finish() {
    emit(pending_);
    pending_.clear();
    if (inside_ && tty_ && !hide_) write_out("\033[0m");
    inside_ = false;
    write_out("", /*flush=*/true);
  }

 private:
  void emit(const std::string& s) {
    if (!(inside_ && hide_)) write_out(s);
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
  std::optional<Session> draft;  // --spec draft: the draft model's session, beside `session`
  Conversation conversation;  // the messages, the system prompt and what the session's cache holds
  bool tty, hide_think;
  GenerateResult last;

  Chat(LoadedModel model, GenerationFlags& f, bool is_tty, bool hide)
      : m(std::move(model)), flags(f), params(f.sampler_params(m.dir)), sampler(params),
        session(m.engine, m.engine.default_context()), conversation(m.conversation(f)), tty(is_tty), hide_think(hide) {
    if (m.draft) draft.emplace(m.draft->session());
  }

  // The target's cache was dropped: the draft's goes too (generate() brings it up to date again).
  void forget_draft() {
    if (draft) draft->reset();
  }

  void reset() {
    conversation.clear();
    conversation.forget_cache(&session);
    forget_draft();
  }

  void answer(const std::string& user) {
    conversation.add_message("user", user);
    size_t n = 0;
    try {
      n = conversation.prompt_ids().size();
    } catch (...) {
      conversation.pop_message();  // a template that cannot render this turn: it is not kept
      throw;
    }
    if (static_cast<int64_t>(n) >= session.context()) {
      conversation.pop_message();
      const std::string what = detail::cat("the conversation (", n, " tokens) no longer fits the ", session.context(),
                                           "-token context; /reset starts over");
      if (!tty) throw Error("chat", what);  // a script must not get 2 answers for 3 questions and exit 0
      std::fprintf(stderr, "moerun: %s\n", what.c_str());
      return;
    }
    GenerateOptions go = m.generate_options(flags, sampler.params(), draft ? &*draft : nullptr);
    ThinkFilter out(tty, hide_think);
    // Ctrl+C (or SIGTERM) stops this answer; the session's InterruptGuard catches it.
    InterruptGuard::clear();
    go.interrupted = [] { return InterruptGuard::signal() != 0; };
    // Reuses the cache up to the first token where the new prompt differs from what it holds.
    try {
      last = conversation.reply(session, sampler, go, [&](std::string_view piece) {
        out.write(piece);
        return true;
      });
    } catch (...) {
      conversation.pop_message();  // the reply reset the session: the next turn prefills from the start
      forget_draft();
      throw;
    }
    out.finish();
    write_out("\n", /*flush=*/true);
    if (last.finish_reason == "interrupted" && tty) std::fprintf(stderr, "[stopped]\n");
    if (last.finish_reason == "context")
      std::fprintf(stderr, "moerun: the context (%lld tokens) is full; /reset starts over\n",
                   static_cast<long long>(session.context()));
  }

  void stats() const {
    char line[512];
    std::snprintf(line, sizeof line, "last answer: %lld new prompt tokens prefilled (%lld reused from the cache) at %.1f t/s; "
                "%lld tokens generated at %.1f t/s (%s); %lld drafted, %lld accepted\ncache: %lld of %lld tokens; %zu messages\n",
                static_cast<long long>(last.prompt_tokens), static_cast<long long>(last.cached_tokens), last.prompt_tps(),
                static_cast<long long>(last.generated_tokens), last.gen_tps(),
                last.finish_reason.empty() ? "-" : last.finish_reason.c_str(), static_cast<long long>(last.drafted_tokens),
                static_cast<long long>(last.accepted_tokens), static_cast<long long>(session.position()),
                static_cast<long long>(session.context()), conversation.messages().size());
    write_out(line);
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
      else if (knob == "seed") {
        const std::optional<uint64_t> seed = parse_seed(value);
        if (!seed) throw std::invalid_argument("seed");
        p.seed = *seed;
      }
      else if (knob == "n-predict") {
        flags.max_tokens = std::stoll(value);
        if (flags.max_tokens <= 0) throw std::invalid_argument("n-predict");
        return;
      } else {
        throw Error("/set", "unknown knob '" + knob + "' (see /help)");
      }
    } catch (const std::logic_error&) {
      throw Error("/set " + knob, "bad value '" + value + "'");
    }
    sampler.set_params(p);  // validates; throws Error on nonsense
  }

  // Atomically: a failure (a full disk) leaves the old file as it was and says so.
  void save(const std::string& file) const { write_file_atomic(file, conversation.to_json().dump(2) + "\n"); }

  void load(const std::string& file) {
    const std::string text = read_file(file, kMaxTextBytes, "the largest conversation read");
    ChatJson j;
    try {
      j = ChatJson::parse(text);
    } catch (const ChatJson::exception& e) {
      throw Error(file, std::string("not a conversation: ") + e.what());
    }
    try {
      conversation.from_json(j);
    } catch (const Error& e) {
      throw Error(file, e.detail());
    }
    conversation.forget_cache(&session);
    forget_draft();
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
    if (cmd == "/help") write_out(kHelp);
    else if (cmd == "/reset") reset();
    else if (cmd == "/system") {
      conversation.set_system(rest);
      reset();
    } else if (cmd == "/set") {
      std::istringstream kv(rest);
      std::string knob, value;
      kv >> knob >> value;
      set(knob, value);
    } else if (cmd == "/stats") stats();
    else if (cmd == "/save") save(rest);
    else if (cmd == "/load") load(rest);
    else throw Error(cmd, "unknown command (see /help)");
    return true;
  }
};

// Reads one user turn (with continuations and """ blocks). Returns false to leave: end of input,
// Ctrl+D, SIGTERM, or a second Ctrl+C on an empty line. Ctrl+C while typing clears the turn; on an
// empty line it says how to leave (so a Ctrl+C meant for an answer that just ended is harmless).
bool read_turn(bool tty, size_t line_cap, std::string& turn) {
  turn.clear();
  bool block = false, more = false, armed = false;
  for (;;) {
    std::string line;
    if (tty) {
      g_typed = false;
      InterruptGuard::clear();
      char* raw = readline(block || more ? "... " : "> ");
      if (!raw) {
        if (InterruptGuard::signal() == SIGINT) {
          const bool empty = !g_typed && turn.empty() && !block;
          if (empty && armed) return false;
          std::fprintf(stderr, empty ? "(Ctrl+C again or Ctrl+D leaves)\n" : "(cleared)\n");
          turn.clear();
          block = more = false;
          armed = true;
          continue;
        }
        if (InterruptGuard::signal()) return false;  // SIGTERM
        return !turn.empty();
      }
      line = raw;
      std::free(raw);
    } else if (!read_stdin_line(line, line_cap)) {
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
    // From here SIGINT and SIGTERM never kill the session: they stop an answer, clear a line or
    // leave cleanly (history written, exit code 130/143 when a signal ended it).
    InterruptGuard guard;
    std::string history = opt->history;
    if (history.empty()) {
      const char* home = std::getenv("HOME");
      history = std::string(home ? home : ".") + "/.moerun_history";
    }
    if (tty) {
      rl_getc_function = key_typed;  // before using_history(), which initialises libedit
      using_history();
      read_history(history.c_str());
      std::fprintf(stderr, "# %s: /help for commands, Ctrl+D to leave\n", chat.m.dir.c_str());
    }
    // A piped turn longer than the context could ever hold is refused as it is read.
    const size_t line_cap = prompt_bytes_cap(chat.session.context());
    std::string turn;
    int left_by_signal = 0;
    while (read_turn(tty, line_cap, turn)) {
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
          // SIGTERM ends the session after the partial answer; outside a terminal Ctrl+C does too.
          if (const int sig = InterruptGuard::signal(); sig == SIGTERM || (sig && !tty)) {
            left_by_signal = sig;
            break;
          }
        }
      } catch (const Error& e) {
        if (e.where() == "stdout") throw;  // nothing more can be shown
        end_progress_line();
        std::fprintf(stderr, "moerun: %s\n", e.what());
        if (!tty) return 1;  // a script should see the failure
      }
    }
    if (!left_by_signal && InterruptGuard::signal() == SIGTERM) left_by_signal = SIGTERM;
    return left_by_signal ? 128 + left_by_signal : 0;
  }});
}

}  // namespace moerun::cli
