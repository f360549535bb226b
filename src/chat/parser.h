#pragma once
// Parses tokens into the AST with jinja2's grammar (jinja2/parser.py, function for function, so
// precedence and the odd corners match: filters bind tighter than unary minus, `is` tests sit at the
// unary level, chained comparisons, implicit string concatenation). Statements: if/elif/else, for
// (with if-filter and else), set (name, tuple, ns.attr, block form), macro, call, filter, with,
// print, break/continue and {% generation %}. Syntax errors and unsupported tags throw Error naming
// the template and line.

#include <string>

#include "chat/ast.h"

namespace moerun::chat {

struct Program {
  std::string name;
  Body body;
};

// Nesting bound for the parser's recursion (parentheses, nested blocks, `not not ...`): deeper
// templates are rejected, not a stack overflow.
constexpr int kMaxParseDepth = 100;
// Bounds on the tree, whichever way it grows: the parser builds left-deep chains (1+1+..., a.b.c...,
// x|f|g..., elif chains) in loops, which kMaxParseDepth does not see. Depth counts statements and
// expressions from the top, as rendering nests (kMaxRenderDepth, 500, leaves room for macro calls);
// the real templates in tests/data are at most 17 levels deep and 332 nodes large.
constexpr int kMaxAstDepth = 256;
constexpr int kMaxAstNodes = 100'000;

Program parse_template(const std::string& source, const std::string& name);

}  // namespace moerun::chat
