#pragma once
// Runs a parsed template over a context of variables, with jinja2's scoping: a for-loop iteration,
// a macro call and a {% with %} each get their own scope (so `set` inside them does not leak, which
// is why templates use namespace()), while `if` shares its enclosing scope.

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/ast.h"
#include "chat/builtins.h"
#include "chat/parser.h"

namespace moerun::chat {

struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Scope> parent;
  bool captured = false;  // a macro closes over it, so a loop must not reuse it for the next iteration
  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value v);
};

// A callable value: a global (range, namespace, ...), a bound method (obj.items) or a macro.
struct Function : Object {
  enum class Kind : uint8_t { global, method, macro } kind = Kind::global;
  std::string name;
  Value self;                     // method: the object it is bound to
  const Macro* macro = nullptr;   // macro: its definition, owned by the Program
  std::weak_ptr<Scope> closure;   // macro: the scope it was defined in (weak: scopes hold macros)
};
Value make_function(Function::Kind kind, std::string name, Value self = {});

// Bound on nested evaluation (expressions, statements, macro calls) at render time.
constexpr int kMaxRenderDepth = 500;
// Bound on loop iterations, so a hostile template fails instead of running forever.
constexpr int64_t kMaxIterations = 1'000'000;

// The rendered text and its content spans (the bytes that came from the conversation).
struct Rendered {
  std::string text;
  Spans spans;
};

// Renders `program` within one RenderBudget (kMaxRenderBytes); evaluation errors come back as Fault
// with the line that raised them.
Rendered render_program(const Program& program, std::vector<std::pair<std::string, Value>> context, const Env& env);

}  // namespace moerun::chat
