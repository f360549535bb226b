// moerun template: the prompt a conversation renders to with the model's chat template (the text;
// tokenize turns it into ids).

#include <string>

#include "cli_io.h"
#include "moerun/chat_template.h"
#include "moerun/commands.h"
#include "moerun/error.h"

namespace moerun::cli {

void add_template_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string model, messages;
    bool no_generation_prompt = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("template", "Print the prompt a conversation renders to with the chat template");
  app->add_option("-m,--model", opt->model, "model directory (default: $MOERUN_MODEL or models/default)");
  app->add_option("--messages", opt->messages, "JSON file: a list of {role, content} (default: stdin)");
  app->add_flag("--no-generation-prompt", opt->no_generation_prompt, "do not open the assistant's turn");
  commands.push_back({app, [opt] {
    const ChatTemplate t = ChatTemplate::load(opt->model.empty() ? default_model_dir() : opt->model);
    std::string text;
    std::string where = opt->messages.empty() ? "stdin" : opt->messages;
    text = opt->messages.empty() ? read_stdin(kMaxTextBytes, "a conversation")
                                 : read_file(opt->messages, kMaxTextBytes, "the largest conversation read");
    ChatJson messages;
    try {
      messages = ChatJson::parse(text);
    } catch (const ChatJson::exception& e) {
      throw Error(where, std::string("not JSON: ") + e.what());
    }
    if (messages.is_object() && messages.contains("messages")) messages = messages["messages"];
    if (!messages.is_array()) throw Error(where, "expected a JSON list of messages");
    ChatOptions co;
    co.add_generation_prompt = !opt->no_generation_prompt;
    write_out(t.apply(messages, co));
    return 0;
  }});
}

}  // namespace moerun::cli
