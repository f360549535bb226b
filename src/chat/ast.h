#pragma once
// The parsed template: jinja2's node types, reduced to the ones the supported subset needs.
//
// Trees are freed without recursion: loops in the parser build left-deep chains (1+1+..., a.b.c...,
// x|f|g|..., elif chains) whose recursive destruction would overflow the stack long before the
// parser's limits (parser.h) reject them, and a rejected tree is freed while unwinding.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/value.h"

namespace moerun::chat {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class ExprKind : uint8_t {
  literal,    // value
  name,       // name
  list,       // args: items
  tuple,      // args: items
  dict,       // args: key, value, key, value, ...
  getattr,    // target.name
  getitem,    // target[args[0]]
  slice,      // args[0]:args[1]:args[2], each may be null
  call,       // target(args, kwargs, *star, **star_star)
  filter,     // target|name(args, kwargs); target is null inside {% filter %} and {% set %} blocks
  test,       // target is name(args, kwargs)
  unary,      // name ("-", "+", "not") target
  binary,     // args[0] name args[1]: + - * / // % **
  and_,       // args[0] and args[1]
  or_,        // args[0] or args[1]
  compare,    // args[0] ops[0] args[1] ops[1] args[2] ...: chained as Python
  concat,     // args joined with ~
  condexpr,   // args[1] if args[0] else args[2] (args[2] may be null)
};

struct Expr {
  Expr() = default;
  Expr(const Expr&) = delete;
  Expr& operator=(const Expr&) = delete;
  ~Expr();  // frees the subtree with a work list (ast.cpp)

  ExprKind kind = ExprKind::literal;
  int line = 0;
  Value value;
  std::string name;
  ExprPtr target;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr star, star_star;
  std::vector<std::string> ops;
};

// The left side of set / for / with: a name, ns.attr, or a tuple of targets to unpack.
struct Target {
  enum class Kind : uint8_t { name, ns_attr, tuple } kind = Kind::name;
  std::string name, attr;
  std::vector<Target> items;
};

struct Macro {
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default may be null
  Body body;
  // jinja2 only accepts extra arguments when the body reads varargs/kwargs, and caller= only when it
  // reads caller.
  bool uses_varargs = false, uses_kwargs = false, uses_caller = false;
};

enum class StmtKind : uint8_t {
  text,          // text
  output,        // {{ expr }}
  if_,           // if expr: body, else: else_body (elif is a nested if)
  for_,          // for target in expr [if filter]: body, else: else_body
  set,           // set target = expr
  set_block,     // set target [| filter] ... endset
  macro,         // macro name(params) ... endmacro
  call_block,    // call [(params)] expr ... endcall: macro is the caller
  filter_block,  // filter name ... endfilter
  with,          // with targets = values: body
  break_,
  continue_,
  scope,         // {% generation %}: the body, rendered in place
};

struct Stmt {
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt();  // frees the subtree with a work list (ast.cpp)

  StmtKind kind = StmtKind::text;
  int line = 0;
  std::string text;
  ExprPtr expr, filter;
  Target target;
  Body body, else_body;
  std::shared_ptr<Macro> macro;
  std::vector<std::pair<Target, ExprPtr>> with_vars;
};

// The line of a node more than `limit` levels below the top of `body` (statements and expressions
// counted alike, as the renderer nests), or 0 when there is none. Walks with a work list.
int line_deeper_than(const Body& body, int limit);

}  // namespace moerun::chat
