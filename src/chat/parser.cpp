#include "chat/parser.h"

#include <algorithm>
#include <initializer_list>

#include "chat/builtins.h"
#include "chat/lexer.h"
#include "moerun/error.h"

namespace moerun::chat {

namespace {

using Ends = std::initializer_list<const char*>;

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name) : tokens_(std::move(tokens)), name_(name) {}

  Body parse() {
    Body body = subparse({});
    if (const int line = line_deeper_than(body, kMaxAstDepth))
      fail("template nested deeper than " + std::to_string(kMaxAstDepth) +
               " levels (statements and expressions; a long chain like 1+1+... or a.b.c... counts each step)",
           line);
    return body;
  }

 private:
  std::vector<Token> tokens_;
  const std::string& name_;
  size_t i_ = 0;
  int depth_ = 0;
  int nodes_ = 0;         // expressions and statements made, against kMaxAstNodes
  int loop_depth_ = 0;    // break/continue are only valid directly inside a for body
  bool soft_ = false;     // inside if/condexpr: jinja2 defers unknown filters/tests to runtime
  std::vector<Macro*> macros_;  // macros being parsed, to note which read varargs/kwargs/caller

  // --- token stream ------------------------------------------------------------------------
  const Token& cur() const { return tokens_[i_]; }
  const Token& look() const { return tokens_[std::min(i_ + 1, tokens_.size() - 1)]; }
  const Token& next() {
    const Token& t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == Tok::op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  bool at_any(Ends names) const {
    return cur().type == Tok::name &&
           std::any_of(names.begin(), names.end(), [&](const char* n) { return cur().text == n; });
  }

  [[noreturn]] void fail(const std::string& what, int line = 0) const {
    throw Error(name_ + ":" + std::to_string(line ? line : cur().line), what);
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::eof: return "end of template";
      case Tok::var_end: return "end of print statement";
      case Tok::block_end: return "end of statement block";
      case Tok::var_begin: return "begin of print statement";
      case Tok::block_begin: return "begin of statement block";
      case Tok::data: return "template data";
      case Tok::string: return "string";
      case Tok::integer: return "integer";
      case Tok::floating: return "float";
      default: return t.text;
    }
  }
  const Token& expect_op(const char* op) {
    if (!is_op(op)) fail(std::string("expected '") + op + "', got '" + describe(cur()) + "'");
    return next();
  }
  const Token& expect_name(const char* n = nullptr) {
    if (cur().type != Tok::name || (n && cur().text != n))
      fail(std::string("expected ") + (n ? "'" + std::string(n) + "'" : std::string("a name")) + ", got '" +
           describe(cur()) + "'");
    return next();
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail(std::string("expected ") + what + ", got '" + describe(cur()) + "'");
    next();
  }

  struct Nest {  // bounds recursion depth: hostile templates must not overflow the stack
    Parser& p;
    explicit Nest(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxParseDepth)
        p.fail("template nested deeper than " + std::to_string(kMaxParseDepth) + " levels");
    }
    ~Nest() { --p.depth_; }
  };
  template <class T>
  struct Save {  // restores a parser flag on scope exit
    T& ref;
    T old;
    Save(T& r, T v) : ref(r), old(r) { r = v; }
    ~Save() { ref = old; }
  };

  void count_node(int line) {
    if (++nodes_ > kMaxAstNodes)
      fail("template has more than " + std::to_string(kMaxAstNodes) + " expressions and statements", line);
  }
  ExprPtr make(ExprKind kind, int line) {
    count_node(line);
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }
  StmtPtr make_stmt(StmtKind kind, int line) {
    count_node(line);
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
  }

  // --- statements --------------------------------------------------------------------------
  Body subparse(Ends end_tokens) {
    Nest nest(*this);
    Body body;
    while (cur().type != Tok::eof) {
      const Token& t = cur();
      if (t.type == Tok::data) {
        auto s = make_stmt(StmtKind::text, t.line);
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::var_begin) {
        next();
        auto s = make_stmt(StmtKind::output, t.line);
        s->expr = parse_tuple(false, true, {}, false);
        body.push_back(std::move(s));
        expect(Tok::var_end, "end of print statement");
      } else if (t.type == Tok::block_begin) {
        next();
        if (end_tokens.size() && at_any(end_tokens)) return body;
        parse_statement(body);
        expect(Tok::block_end, "end of statement block");
      } else {
        fail("unexpected '" + describe(t) + "'");
      }
    }
    if (end_tokens.size()) {
      std::string names;
      for (const char* n : end_tokens) names += (names.empty() ? "'" : " or '") + std::string(n) + "'";
      fail("unexpected end of template, expected " + names);
    }
    return body;
  }

  Body parse_statements(Ends end_tokens, bool drop_needle) {
    skip_op(":");
    expect(Tok::block_end, "end of statement block");
    Body body = subparse(end_tokens);
    if (drop_needle) next();
    return body;
  }

  void parse_statement(Body& body) {
    if (cur().type != Tok::name) fail("tag name expected");
    const std::string tag = cur().text;
    const int line = cur().line;
    if (tag == "for") return body.push_back(parse_for());
    if (tag == "if") return body.push_back(parse_if());
    if (tag == "set") return body.push_back(parse_set());
    if (tag == "macro") return body.push_back(parse_macro());
    if (tag == "call") return body.push_back(parse_call_block());
    if (tag == "filter") return body.push_back(parse_filter_block());
    if (tag == "with") return body.push_back(parse_with());
    if (tag == "print") {
      next();
      for (bool first = true; cur().type != Tok::block_end; first = false) {
        if (!first) expect_op(",");
        auto s = make_stmt(StmtKind::output, line);
        s->expr = parse_expression();
        body.push_back(std::move(s));
      }
      return;
    }
    if (tag == "break" || tag == "continue") {
      // jinja2 compiles these to Python break/continue, which are syntax errors outside a loop.
      if (loop_depth_ == 0) fail("'" + tag + "' outside loop");
      next();
      return body.push_back(make_stmt(tag == "break" ? StmtKind::break_ : StmtKind::continue_, line));
    }
    if (tag == "generation") {  // transformers' AssistantTracker: renders its body in place
      next();
      auto s = make_stmt(StmtKind::scope, line);
      Save<int> no_loop(loop_depth_, 0);  // the body is a caller() macro in jinja2
      s->body = parse_statements({"endgeneration"}, true);
      return body.push_back(std::move(s));
    }
    for (const char* unsupported : {"block", "extends", "include", "import", "from", "autoescape"})
      if (tag == unsupported) fail("the {% " + tag + " %} tag is not supported");
    fail("encountered unknown tag '" + tag + "'");
  }

  StmtPtr parse_for() {
    auto s = make_stmt(StmtKind::for_, next().line);
    s->target = parse_assign_target(true, false, {"in"}, false);
    expect_name("in");
    s->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) {
      Save<bool> hard(soft_, false);
      s->filter = parse_expression();
    }
    if (is_name("recursive")) fail("recursive for loops are not supported");
    {
      Save<bool> hard(soft_, false);
      Save<int> in_loop(loop_depth_, loop_depth_ + 1);
      s->body = parse_statements({"endfor", "else"}, false);
    }
    if (next().text == "else") {
      Save<bool> hard(soft_, false);
      s->else_body = parse_statements({"endfor"}, true);
    }
    return s;
  }

  StmtPtr parse_if() {
    auto s = make_stmt(StmtKind::if_, next().line);
    Save<bool> soft(soft_, true);
    Stmt* node = s.get();
    while (true) {
      node->expr = parse_tuple(false, false, {}, false);
      node->body = parse_statements({"elif", "else", "endif"}, false);
      const Token& t = next();
      if (t.text == "elif") {
        node->else_body.push_back(make_stmt(StmtKind::if_, t.line));
        node = node->else_body.back().get();
        continue;
      }
      if (t.text == "else") node->else_body = parse_statements({"endif"}, true);
      return s;
    }
  }

  StmtPtr parse_set() {
    const int line = next().line;
    Target target = parse_assign_target(true, false, {}, true);
    if (skip_op("=")) {
      auto s = make_stmt(StmtKind::set, line);
      s->target = std::move(target);
      s->expr = parse_tuple(false, true, {}, false);
      return s;
    }
    auto s = make_stmt(StmtKind::set_block, line);
    s->target = std::move(target);
    s->filter = parse_filter(nullptr, false);
    Save<bool> hard(soft_, false);
    s->body = parse_statements({"endset"}, true);
    return s;
  }

  void parse_signature(Macro& m) {
    expect_op("(");
    bool defaults = false;
    while (!is_op(")")) {
      if (!m.params.empty()) expect_op(",");
      std::string param = parse_assign_target(false, true, {}, false).name;
      ExprPtr def;
      if (skip_op("=")) {
        def = parse_expression();
        defaults = true;
      } else if (defaults) {
        fail("non-default argument follows default argument");
      }
      m.params.emplace_back(std::move(param), std::move(def));
    }
    expect_op(")");
  }

  Body parse_macro_body(Macro& m, const char* end) {
    Save<bool> hard(soft_, false);
    Save<int> no_loop(loop_depth_, 0);
    macros_.push_back(&m);
    Body body = parse_statements({end}, true);
    macros_.pop_back();
    return body;
  }

  StmtPtr parse_macro() {
    auto s = make_stmt(StmtKind::macro, next().line);
    s->macro = std::make_shared<Macro>();
    s->macro->name = parse_assign_target(false, true, {}, false).name;
    parse_signature(*s->macro);
    s->macro->body = parse_macro_body(*s->macro, "endmacro");
    return s;
  }

  StmtPtr parse_call_block() {
    auto s = make_stmt(StmtKind::call_block, next().line);
    s->macro = std::make_shared<Macro>();
    s->macro->name = "caller";
    if (is_op("(")) parse_signature(*s->macro);
    s->expr = parse_expression();
    if (s->expr->kind != ExprKind::call) fail("expected call", s->line);
    s->macro->body = parse_macro_body(*s->macro, "endcall");
    return s;
  }

  StmtPtr parse_filter_block() {
    auto s = make_stmt(StmtKind::filter_block, next().line);
    s->filter = parse_filter(nullptr, true);
    Save<bool> hard(soft_, false);
    s->body = parse_statements({"endfilter"}, true);
    return s;
  }

  StmtPtr parse_with() {
    auto s = make_stmt(StmtKind::with, next().line);
    while (cur().type != Tok::block_end) {
      if (!s->with_vars.empty()) expect_op(",");
      Target t = parse_assign_target(true, false, {}, false);
      expect_op("=");
      s->with_vars.emplace_back(std::move(t), parse_expression());
    }
    Save<bool> hard(soft_, false);
    s->body = parse_statements({"endwith"}, true);
    return s;
  }

  Target to_target(const Expr& e) {
    Target t;
    if (e.kind == ExprKind::name) {
      t.name = e.name;
    } else if (e.kind == ExprKind::getattr && e.target && e.target->kind == ExprKind::name) {
      t.kind = Target::Kind::ns_attr;  // only with_namespace parses produce this shape here
      t.name = e.target->name;
      t.attr = e.name;
    } else if (e.kind == ExprKind::tuple) {
      t.kind = Target::Kind::tuple;
      for (const auto& item : e.args) t.items.push_back(to_target(*item));
    } else {
      fail("can't assign to this expression", e.line);
    }
    return t;
  }

  Target parse_assign_target(bool with_tuple, bool name_only, Ends extra_end, bool with_namespace) {
    if (name_only) {
      Target t;
      t.name = expect_name().text;
      for (const char* reserved : {"true", "false", "none", "True", "False", "None"})
        if (t.name == reserved) fail("can't assign to '" + t.name + "'");
      return t;
    }
    ExprPtr e = with_tuple ? parse_tuple(true, true, extra_end, false, with_namespace) : parse_primary(with_namespace);
    return to_target(*e);
  }

  // --- expressions -------------------------------------------------------------------------
  ExprPtr parse_expression(bool with_condexpr = true) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    Nest nest(*this);
    int line = cur().line;
    ExprPtr expr1 = parse_or();
    while (is_name("if")) {
      Save<bool> soft(soft_, true);
      next();
      auto e = make(ExprKind::condexpr, line);
      e->args.push_back(parse_or());
      e->args.push_back(std::move(expr1));
      e->args.push_back(skip_name("else") ? parse_condexpr() : nullptr);
      expr1 = std::move(e);
      line = cur().line;
    }
    return expr1;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      auto e = make(ExprKind::or_, next().line);
      e->args.push_back(std::move(left));
      e->args.push_back(parse_and());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      auto e = make(ExprKind::and_, next().line);
      e->args.push_back(std::move(left));
      e->args.push_back(parse_not());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (!is_name("not")) return parse_compare();
    Nest nest(*this);
    auto e = make(ExprKind::unary, next().line);
    e->name = "not";
    e->target = parse_not();
    return e;
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr e;
    while (true) {
      std::string op;
      if (cur().type == Tok::op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" || cur().text == ">" ||
           cur().text == ">=")) {
        op = next().text;
      } else if (skip_name("in")) {
        op = "in";
      } else if (is_name("not") && look().type == Tok::name && look().text == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!e) {
        e = make(ExprKind::compare, line);
        e->args.push_back(std::move(first));
      }
      e->ops.push_back(op);
      e->args.push_back(parse_math1());
    }
    return e ? std::move(e) : std::move(first);
  }

  ExprPtr binary(const char* op, ExprPtr left, ExprPtr right, int line) {
    auto e = make(ExprKind::binary, line);
    e->name = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      left = binary(t.text.c_str(), std::move(left), parse_concat(), t.line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(ExprKind::concat, cur().line);
    e->args.push_back(std::move(first));
    while (skip_op("~")) e->args.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      left = binary(t.text.c_str(), std::move(left), parse_pow(), t.line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const int line = next().line;
      left = binary("**", std::move(left), parse_unary(true), line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      node = make(ExprKind::unary, t.line);
      node->name = t.text;
      node->target = parse_unary(false);
    } else {
      node = parse_primary(false);
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary(bool with_namespace) {
    const Token& t = cur();
    if (t.type == Tok::name) {
      next();
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        auto e = make(ExprKind::literal, t.line);
        e->value = Value::boolean(t.text[0] == 't' || t.text[0] == 'T');
        return e;
      }
      if (t.text == "none" || t.text == "None") {
        auto e = make(ExprKind::literal, t.line);
        e->value = Value::none();
        return e;
      }
      auto e = make(ExprKind::name, t.line);
      e->name = t.text;
      for (Macro* m : macros_) {
        m->uses_varargs |= e->name == "varargs";
        m->uses_kwargs |= e->name == "kwargs";
        m->uses_caller |= e->name == "caller";
      }
      if (with_namespace && is_op(".")) {  // ns.attr as an assignment target
        next();
        auto ref = make(ExprKind::getattr, t.line);
        ref->name = expect_name().text;
        ref->target = std::move(e);
        return ref;
      }
      return e;
    }
    if (t.type == Tok::string) {
      auto e = make(ExprKind::literal, t.line);
      std::string s;
      while (cur().type == Tok::string) s += next().text;  // adjacent literals concatenate
      e->value = Value::string(std::move(s));
      return e;
    }
    if (t.type == Tok::integer || t.type == Tok::floating) {
      auto e = make(ExprKind::literal, t.line);
      e->value = t.type == Tok::integer ? Value::integer(t.integer) : Value::floating(t.floating);
      next();
      return e;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      auto e = make(ExprKind::list, next().line);
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(parse_expression());
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      auto e = make(ExprKind::dict, next().line);
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
      }
      expect_op("}");
      return e;
    }
    fail("unexpected '" + describe(t) + "'");
  }

  bool is_tuple_end(Ends extra_end) const {
    if (cur().type == Tok::var_end || cur().type == Tok::block_end || is_op(")")) return true;
    return at_any(extra_end);
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr, Ends extra_end, bool explicit_parens,
                      bool with_namespace = false) {
    const int line = cur().line;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      args.push_back(simplified ? parse_primary(with_namespace) : parse_expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) fail("expected an expression, got '" + describe(cur()) + "'");
    }
    auto e = make(ExprKind::tuple, line);
    e->args = std::move(args);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter(std::move(node), false);
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const Token& t = next();
    if (t.text == ".") {
      const Token& attr = cur();
      next();
      if (attr.type == Tok::name) {
        auto e = make(ExprKind::getattr, t.line);
        e->target = std::move(node);
        e->name = attr.text;
        return e;
      }
      if (attr.type != Tok::integer) fail("expected name or number", attr.line);
      auto e = make(ExprKind::getitem, t.line);
      e->target = std::move(node);
      auto index = make(ExprKind::literal, attr.line);
      index->value = Value::integer(attr.integer);
      e->args.push_back(std::move(index));
      return e;
    }
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    auto e = make(ExprKind::getitem, t.line);
    e->target = std::move(node);
    if (args.size() == 1) {
      e->args.push_back(std::move(args[0]));
    } else {
      auto tuple = make(ExprKind::tuple, t.line);
      tuple->args = std::move(args);
      e->args.push_back(std::move(tuple));
    }
    return e;
  }

  ExprPtr parse_subscribed() {
    const int line = cur().line;
    std::vector<ExprPtr> args;
    if (is_op(":")) {
      next();
      args.push_back(nullptr);
    } else {
      ExprPtr node = parse_expression();
      if (!is_op(":")) return node;
      next();
      args.push_back(std::move(node));
    }
    if (is_op(":")) {
      args.push_back(nullptr);
    } else if (!is_op("]") && !is_op(",")) {
      args.push_back(parse_expression());
    } else {
      args.push_back(nullptr);
    }
    if (is_op(":")) {
      next();
      args.push_back(!is_op("]") && !is_op(",") ? parse_expression() : nullptr);
    } else {
      args.push_back(nullptr);
    }
    auto e = make(ExprKind::slice, line);
    e->args = std::move(args);
    return e;
  }

  void parse_call_args(Expr& e) {
    const int line = expect_op("(").line;
    bool require_comma = false;
    auto ensure = [&](bool ok) {
      if (!ok) fail("invalid syntax for function call expression", line);
    };
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;  // trailing comma
      }
      if (is_op("*")) {
        ensure(!e.star && !e.star_star);
        next();
        e.star = parse_expression();
      } else if (is_op("**")) {
        ensure(!e.star_star);
        next();
        e.star_star = parse_expression();
      } else if (cur().type == Tok::name && look().type == Tok::op && look().text == "=") {
        ensure(!e.star_star);
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        ensure(!e.star && !e.star_star && e.kwargs.empty());
        e.args.push_back(parse_expression());
      }
      require_comma = true;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr node) {
    auto e = make(ExprKind::call, cur().line);
    e->target = std::move(node);
    parse_call_args(*e);
    return e;
  }

  std::string dotted_name() {
    std::string n = expect_name().text;
    while (is_op(".")) {
      next();
      n += "." + expect_name().text;
    }
    return n;
  }

  void check_known(Support support, const std::string& what, const std::string& name, int line) const {
    if (support == Support::unknown && !soft_) fail("no " + what + " named '" + name + "'", line);
  }

  // `target|f|g(...)`; with start_inline (the {% filter %} tag) the first name comes without a pipe.
  ExprPtr parse_filter(ExprPtr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      auto e = make(ExprKind::filter, cur().line);
      e->name = dotted_name();
      check_known(filter_support(e->name), "filter", e->name, e->line);
      if (is_op("(")) parse_call_args(*e);
      e->target = std::move(node);
      node = std::move(e);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    const int line = next().line;
    const bool negated = skip_name("not");
    auto e = make(ExprKind::test, line);
    e->name = dotted_name();
    check_known(test_support(e->name), "test", e->name, line);
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::name || cur().type == Tok::string || cur().type == Tok::integer ||
                cur().type == Tok::floating || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("you cannot chain multiple tests with is");
      e->args.push_back(parse_postfix(parse_primary(false)));  // `x is divisibleby 3`
    }
    e->target = std::move(node);
    if (!negated) return e;
    auto n = make(ExprKind::unary, line);
    n->name = "not";
    n->target = std::move(e);
    return n;
  }
};

}  // namespace

Program parse_template(const std::string& source, const std::string& name) {
  Program p;
  p.name = name;
  p.body = Parser(tokenize(source, name), name).parse();
  return p;
}

}  // namespace moerun::chat
