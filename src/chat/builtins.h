#pragma once
// jinja2's builtin filters, tests and globals (filters.cpp), and Python's object semantics as the
// sandbox exposes them (operations.cpp): the str/dict/list methods templates call, operators, and
// attribute and item lookup (obj.x tries the Python attribute, then obj["x"]; obj["x"] the reverse;
// a miss is Undefined).

#include <ctime>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/value.h"

namespace moerun::chat {

struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  bool keyword_content = false;  // some keyword name came from the conversation (f(**message))
};

// Whether a filter or test name is one we implement, one jinja2 has that we do not, or unknown to
// jinja2 too (a template error at parse time, as in jinja2).
enum class Support : uint8_t { ours, jinja_only, unknown };
Support filter_support(std::string_view name);
Support test_support(std::string_view name);

// What builtins need from the renderer.
struct Env {
  std::optional<std::time_t> now;  // strftime_now's clock; nullopt: the system clock
  // Every namespace() made, so the renderer can break reference cycles (ns.self = ns) when done.
  std::vector<std::shared_ptr<Namespace>>* namespaces = nullptr;
};

Value apply_filter(std::string_view name, const Value& input, const Args& args, const Env& env);
bool apply_test(std::string_view name, const Value& input, const Args& args);

// Globals: range, dict, namespace, raise_exception, strftime_now (and jinja2's lipsum, cycler, joiner,
// which raise as unsupported when called).
const std::vector<std::string>& global_names();
Value call_global(std::string_view name, const Args& args, const Env& env);

Value get_attr(const Value& obj, const std::string& name);   // obj.name
// The Python attribute obj.name (a bound method, a namespace attribute), or nullopt when Python has
// none; dunder names come back as an unsafe Undefined, as in the sandbox.
std::optional<Value> python_attribute(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);          // obj[key]
// obj[start:stop:step] (each may be None): a plain Python subscript, so errors are raised.
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// A bound method obj.name (made by get_attr) called with args.
Value call_method(const Value& self, std::string_view name, const Args& args);

// Binds Python-style arguments to parameter names (positional first, then by keyword), as a call to
// a Python function would; a parameter not given stays empty. `keywords` false: positional only.
std::vector<std::optional<Value>> bind_args(std::string_view fn, const Args& args,
                                            std::initializer_list<std::string_view> names, bool keywords = true);
std::string html_escape(std::string_view s);  // markupsafe.escape: & < > " '

// Python operators.
Value binary_op(std::string_view op, const Value& a, const Value& b);
Value unary_op(std::string_view op, const Value& a);
bool contains(const Value& container, const Value& item);  // item in container

}  // namespace moerun::chat
