#include "chat/interpreter.h"

#include <deque>
#include <optional>

#include "chat/text.h"

namespace moerun::chat {

const Value* Scope::find(std::string_view name) const {
  for (const auto& [k, v] : vars)
    if (k == name) return &v;
  return nullptr;
}

void Scope::set(const std::string& name, Value v) {
  for (auto& [k, old] : vars) {
    if (k == name) {
      old = std::move(v);
      return;
    }
  }
  vars.emplace_back(name, std::move(v));
}

Value make_function(Function::Kind kind, std::string name, Value self) {
  auto f = std::make_shared<Function>();
  f->kind = kind;
  f->name = std::move(name);
  f->self = std::move(self);
  return Value::object(Type::function, std::move(f));
}

std::string function_repr(const Value& v) {
  const Function& f = v.as<Function>();
  if (f.kind == Function::Kind::macro) return "<Macro " + repr_string(f.name) + ">";
  fail("cannot print function '" + f.name + "' (Python prints its memory address)");
}

namespace {

class Interpreter;

// jinja2's LoopContext. With an `if` filter, items are filtered as the loop reaches them (a filter
// may read a namespace the body changes); loop.last, loop.length and loop.nextitem look ahead.
struct LoopState : Object {
  static constexpr size_t kNone = static_cast<size_t>(-1);
  Interpreter* interp = nullptr;
  std::vector<Value> items;  // unfiltered
  std::shared_ptr<const Fault> error;  // raised after the items (a generator's deferred error)
  size_t next_src = 0;
  std::deque<size_t> ahead;  // indices of filtered items fetched early
  const Expr* filter = nullptr;
  const Target* target = nullptr;
  std::shared_ptr<Scope> outer;
  int64_t index0 = -1;
  size_t current = kNone, previous = kNone;  // indices into items
  std::optional<Value> last_changed;

  size_t pull();   // the index of the next item that passes the filter, or kNone
  size_t fetch();  // the next item: looked-ahead ones first
  size_t peek();
  int64_t length();
};

enum class Flow : uint8_t { normal, break_, continue_ };

class Interpreter {
 public:
  Interpreter(const Program& program, std::vector<std::pair<std::string, Value>> context, const Env& env)
      : program_(program), env_(env) {
    env_.namespaces = &namespaces_;
    auto globals = std::make_shared<Scope>();
    for (const std::string& name : global_names()) globals->set(name, make_function(Function::Kind::global, name));
    auto vars = std::make_shared<Scope>();
    vars->vars = std::move(context);
    vars->parent = std::move(globals);
    scope_ = std::make_shared<Scope>();
    scope_->parent = std::move(vars);
  }

  ~Interpreter() {
    // Namespaces are the only mutable containers, so the only way to build a reference cycle
    // (ns.me = ns, or a loop stored in a namespace). Emptying them frees everything.
    for (auto& ns : namespaces_) ns->attrs.clear();
  }

  Rendered run() {
    TextBuilder out;
    exec(program_.body, out);
    return {out.take_text(), out.take_spans()};
  }

  bool passes_filter(LoopState& loop, const Value& item) {
    auto saved = scope_;
    scope_ = std::make_shared<Scope>();
    scope_->parent = loop.outer;
    assign(*loop.target, item);
    const bool ok = truthy(eval(*loop.filter));
    scope_ = std::move(saved);
    return ok;
  }

 private:
  const Program& program_;
  Env env_;
  std::vector<std::shared_ptr<Namespace>> namespaces_;
  std::shared_ptr<Scope> scope_;
  int depth_ = 0;
  int64_t iterations_ = 0;
  const Value* block_input_ = nullptr;  // the rendered body a {% filter %} / {% set %} block filters

  struct Depth {
    int& d;
    explicit Depth(int& depth) : d(depth) {
      if (++d > kMaxRenderDepth) fail("template recursion deeper than " + std::to_string(kMaxRenderDepth) + " levels");
    }
    ~Depth() { --d; }
  };
  struct ScopeSwap {  // runs a block in `inner`, restoring the current scope afterwards
    std::shared_ptr<Scope>& slot;
    std::shared_ptr<Scope> saved;
    ScopeSwap(std::shared_ptr<Scope>& s, std::shared_ptr<Scope> inner) : slot(s), saved(s) { slot = std::move(inner); }
    ~ScopeSwap() { slot = std::move(saved); }
  };
  std::shared_ptr<Scope> child_scope() const {
    auto s = std::make_shared<Scope>();
    s->parent = scope_;
    return s;
  }

  Value lookup(const std::string& name) const {
    for (const Scope* s = scope_.get(); s; s = s->parent.get())
      if (const Value* v = s->find(name)) return *v;
    // jinja2 always defines `self` (the template's blocks); we have no blocks to offer.
    if (name == "self") fail("'self' (the template's block reference) is not supported");
    return Value::undefined("'" + name + "' is undefined");
  }

  // --- statements --------------------------------------------------------------------------
  Flow exec(const Body& body, TextBuilder& out) {
    for (const StmtPtr& s : body) {
      const Flow f = exec(*s, out);
      if (f != Flow::normal) return f;
    }
    return Flow::normal;
  }

  Flow exec(const Stmt& s, TextBuilder& out) {
    Depth depth(depth_);
    try {
      return exec_stmt(s, out);
    } catch (Fault& f) {
      if (!f.line) f.line = s.line;
      throw;
    }
  }

  Flow exec_stmt(const Stmt& s, TextBuilder& out) {
    switch (s.kind) {
      case StmtKind::text: out.append(s.text); break;
      case StmtKind::output: out.append(eval(*s.expr)); break;
      case StmtKind::if_: return exec(truthy(eval(*s.expr)) ? s.body : s.else_body, out);
      case StmtKind::for_: exec_for(s, out); break;
      case StmtKind::set: assign(s.target, eval(*s.expr), true); break;
      case StmtKind::set_block: {
        TextBuilder text;
        {
          ScopeSwap inner(scope_, child_scope());
          exec(s.body, text);
        }
        Value v = text.take();
        if (s.filter) v = eval_with_input(*s.filter, v);
        assign(s.target, std::move(v), true);
        break;
      }
      case StmtKind::macro: {
        Value fn = make_function(Function::Kind::macro, s.macro->name);
        fn.as<Function>().macro = s.macro.get();
        fn.as<Function>().closure = scope_;
        scope_->captured = true;
        scope_->set(s.macro->name, std::move(fn));
        break;
      }
      case StmtKind::call_block: {
        Value caller = make_function(Function::Kind::macro, "caller");
        caller.as<Function>().macro = s.macro.get();
        caller.as<Function>().closure = scope_;
        scope_->captured = true;
        out.append(eval_call(*s.expr, &caller));
        break;
      }
      case StmtKind::filter_block: {
        TextBuilder text;
        {
          ScopeSwap inner(scope_, child_scope());
          exec(s.body, text);
        }
        out.append(eval_with_input(*s.filter, text.take()));
        break;
      }
      case StmtKind::with: {
        std::vector<Value> values;
        for (const auto& [target, expr] : s.with_vars) values.push_back(eval(*expr));
        ScopeSwap inner(scope_, child_scope());
        for (size_t i = 0; i < values.size(); ++i) assign(s.with_vars[i].first, std::move(values[i]));
        return exec(s.body, out);
      }
      case StmtKind::break_: return Flow::break_;
      case StmtKind::continue_: return Flow::continue_;
      case StmtKind::scope: {
        ScopeSwap inner(scope_, child_scope());
        exec(s.body, out);
        break;
      }
    }
    return Flow::normal;
  }

  void exec_for(const Stmt& s, TextBuilder& out) {
    auto loop = std::make_shared<LoopState>();
    loop->interp = this;
    LazyItems source = iterate_lazy(eval(*s.expr));
    loop->items = std::move(source.items);
    loop->error = std::move(source.error);
    loop->filter = s.filter.get();
    loop->target = &s.target;
    loop->outer = scope_;
    const Value loop_value = Value::object(Type::loop, loop);
    // jinja2 runs the else block unless some iteration finished its body (break and continue skip
    // the flag, so `{% for %}{% break %}{% else %}` still runs the else).
    bool iterated = false;
    std::shared_ptr<Scope> scope;
    for (size_t item; (item = loop->fetch()) != LoopState::kNone;) {
      if (++iterations_ > kMaxIterations) fail("more than " + std::to_string(kMaxIterations) + " loop iterations");
      ++loop->index0;
      loop->previous = loop->current;
      loop->current = item;
      // Each iteration starts from a fresh scope; the last one is reused unless a macro captured it.
      if (!scope || scope->captured) {
        scope = child_scope();
      } else {
        scope->vars.clear();
      }
      ScopeSwap inner(scope_, scope);
      scope_->set("loop", loop_value);
      assign(s.target, loop->items[item]);
      const Flow flow = exec(s.body, out);
      if (flow == Flow::break_) break;
      if (flow == Flow::normal) iterated = true;
    }
    if (!iterated) exec(s.else_body, out);
  }

  void assign(const Target& t, Value v, bool allow_ns = false) {
    switch (t.kind) {
      case Target::Kind::name: scope_->set(t.name, std::move(v)); return;
      case Target::Kind::tuple: {
        std::vector<Value> items = iterate(v);
        if (items.size() != t.items.size())
          fail(items.size() > t.items.size()
                   ? "too many values to unpack (expected " + std::to_string(t.items.size()) + ")"
                   : "not enough values to unpack (expected " + std::to_string(t.items.size()) + ", got " +
                         std::to_string(items.size()) + ")");
        for (size_t i = 0; i < items.size(); ++i) assign(t.items[i], std::move(items[i]));
        return;
      }
      case Target::Kind::ns_attr: {
        const Value ns = lookup(t.name);
        if (!allow_ns || !ns.is(Type::ns)) fail("cannot assign attribute on non-namespace object");
        if (!t.attr.empty() && t.attr[0] == '_')  // transformers' TemplateNamespace
          fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + t.attr + "'");
        Namespace& n = ns.as<Namespace>();
        if (Value* slot = n.find(t.attr)) {
          *slot = std::move(v);
        } else {
          n.attrs.emplace_back(t.attr, std::move(v));
        }
        return;
      }
    }
  }

  // --- expressions -------------------------------------------------------------------------
  Value eval(const Expr& e) {
    Depth depth(depth_);
    try {
      return eval_expr(e);
    } catch (Fault& f) {
      if (!f.line) f.line = e.line;
      throw;
    }
  }

  Value eval_with_input(const Expr& filter_chain, const Value& input) {
    const Value* saved = block_input_;
    block_input_ = &input;
    Value v = eval(filter_chain);
    block_input_ = saved;
    return v;
  }

  Args eval_args(const Expr& e) {
    Args a;
    for (const ExprPtr& arg : e.args) a.positional.push_back(eval(*arg));
    if (e.star)
      for (Value& v : iterate(eval(*e.star))) a.positional.push_back(std::move(v));
    for (const auto& [k, arg] : e.kwargs) a.keyword.emplace_back(k, eval(*arg));
    if (e.star_star) {
      const Value d = eval(*e.star_star);
      if (!d.is(Type::dict)) fail("argument after ** must be a mapping, not " + std::string(type_name(d)));
      for (const auto& [k, v] : d.as<Dict>().items) {
        if (!k.is_string()) fail("keywords must be strings");
        a.keyword.emplace_back(k.str(), v);
        a.keyword_content = a.keyword_content || has_content(k);
      }
    }
    return a;
  }

  Value eval_call(const Expr& e, const Value* caller = nullptr) {
    const Value callee = eval(*e.target);
    Args args = eval_args(e);
    if (caller) args.keyword.emplace_back("caller", *caller);
    return call(callee, args);
  }

  Value call(const Value& callee, const Args& args) {
    if (callee.is_undefined()) fail_undefined(callee);
    if (!callee.is(Type::function)) fail(std::string("'") + type_name(callee) + "' object is not callable");
    const Function& f = callee.as<Function>();
    switch (f.kind) {
      case Function::Kind::global: return call_global(f.name, args, env_);
      case Function::Kind::method:
        if (f.self.is(Type::loop)) return call_loop_method(f.self.as<LoopState>(), f.name, args);
        return call_method(f.self, f.name, args);
      case Function::Kind::macro: return call_macro(f, args);
    }
    return {};
  }

  Value call_macro(const Function& f, const Args& args) {
    const Macro& m = *f.macro;
    std::shared_ptr<Scope> closure = f.closure.lock();
    if (!closure) fail("macro '" + m.name + "' called after the scope that defined it ended (unsupported)");
    auto scope = std::make_shared<Scope>();
    scope->parent = std::move(closure);
    const size_t n = m.params.size();
    if (args.positional.size() > n && !m.uses_varargs)
      fail("macro '" + m.name + "' takes not more than " + std::to_string(n) + " argument(s)");
    std::vector<std::optional<Value>> bound(n);
    for (size_t i = 0; i < n && i < args.positional.size(); ++i) bound[i] = args.positional[i];
    std::vector<std::pair<Value, Value>> extra_kwargs;
    std::optional<Value> caller;
    for (const auto& [k, v] : args.keyword) {
      size_t i = 0;
      while (i < n && m.params[i].first != k) ++i;
      if (i < n) {
        if (bound[i]) fail("macro '" + m.name + "' got multiple values for argument '" + k + "'");
        bound[i] = v;
      } else if (k == "caller" && m.uses_caller) {
        caller = v;
      } else if (m.uses_kwargs) {
        extra_kwargs.emplace_back(derived(k, false, args.keyword_content), v);
      } else {
        fail("macro '" + m.name + "' takes no keyword argument '" + k + "'");
      }
    }
    ScopeSwap inner(scope_, scope);
    for (size_t i = 0; i < n; ++i) {  // defaults are evaluated in the macro's scope, after earlier params
      const auto& [param, def] = m.params[i];
      scope_->set(param, bound[i] ? std::move(*bound[i])
                         : def    ? eval(*def)
                                  : Value::undefined("parameter '" + param + "' was not provided"));
    }
    if (m.uses_varargs) {
      std::vector<Value> extra;
      for (size_t i = n; i < args.positional.size(); ++i) extra.push_back(args.positional[i]);
      scope_->set("varargs", make_tuple(std::move(extra)));
    }
    if (m.uses_kwargs) scope_->set("kwargs", make_dict(std::move(extra_kwargs)));
    if (m.uses_caller) scope_->set("caller", caller ? *caller : Value::undefined("No caller defined"));
    TextBuilder out;
    exec(m.body, out);
    return out.take();
  }

  Value loop_attr(const Value& loop_value, const std::string& name) {
    LoopState& loop = loop_value.as<LoopState>();
    if (name == "index0") return Value::integer(loop.index0);
    if (name == "index") return Value::integer(loop.index0 + 1);
    if (name == "first") return Value::boolean(loop.index0 == 0);
    if (name == "last") return Value::boolean(loop.peek() == LoopState::kNone);
    if (name == "length") return Value::integer(loop.length());
    if (name == "revindex") return Value::integer(loop.length() - loop.index0);
    if (name == "revindex0") return Value::integer(loop.length() - loop.index0 - 1);
    if (name == "depth") return Value::integer(1);
    if (name == "depth0") return Value::integer(0);
    if (name == "previtem")
      return loop.previous != LoopState::kNone ? loop.items[loop.previous] : Value::undefined("there is no previous item");
    if (name == "nextitem") {
      const size_t next = loop.peek();
      return next != LoopState::kNone ? loop.items[next] : Value::undefined("there is no next item");
    }
    if (name == "cycle" || name == "changed") return make_function(Function::Kind::method, name, loop_value);
    return Value::undefined("'LoopContext object' has no attribute '" + name + "'");
  }

  Value call_loop_method(LoopState& loop, const std::string& name, const Args& args) {
    if (!args.keyword.empty()) fail("loop." + name + "() takes no keyword arguments");
    if (name == "cycle") {
      if (args.positional.empty()) fail("no items for cycling given");
      return args.positional[static_cast<size_t>(loop.index0) % args.positional.size()];
    }
    const Value now = make_tuple(args.positional);  // changed(*values)
    if (loop.last_changed && equal(*loop.last_changed, now)) return Value::boolean(false);
    loop.last_changed = now;
    return Value::boolean(true);
  }

  Value eval_expr(const Expr& e) {
    switch (e.kind) {
      case ExprKind::literal: return e.value;
      case ExprKind::name: return lookup(e.name);
      case ExprKind::list:
      case ExprKind::tuple: {
        std::vector<Value> items;
        items.reserve(e.args.size());
        for (const ExprPtr& a : e.args) items.push_back(eval(*a));
        return e.kind == ExprKind::list ? make_list(std::move(items)) : make_tuple(std::move(items));
      }
      case ExprKind::dict: {
        std::vector<std::pair<Value, Value>> items;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i]);
          items.emplace_back(std::move(k), eval(*e.args[i + 1]));
        }
        return make_dict(std::move(items));
      }
      case ExprKind::getattr: {
        const Value obj = eval(*e.target);
        if (obj.is_undefined()) fail_undefined(obj);
        if (obj.is(Type::loop)) return loop_attr(obj, e.name);
        return get_attr(obj, e.name);
      }
      case ExprKind::getitem: {
        const Value obj = eval(*e.target);
        if (obj.is_undefined()) fail_undefined(obj);
        const Expr& index = *e.args[0];
        if (index.kind == ExprKind::slice) {
          auto part = [&](const ExprPtr& p) { return p ? eval(*p) : Value::none(); };
          const Value start = part(index.args[0]), stop = part(index.args[1]), step = part(index.args[2]);
          return slice(obj, start, stop, step);
        }
        const Value key = eval(index);
        if (obj.is(Type::loop)) {
          if (key.is_string()) return loop_attr(obj, key.str());
          return Value::undefined("'LoopContext object' has no element " + repr(key));
        }
        return get_item(obj, key);
      }
      case ExprKind::slice: fail("a slice is only valid inside [...]");
      case ExprKind::call: return eval_call(e);
      case ExprKind::filter: {
        if (!e.target && !block_input_) fail("filter without input");
        const Value input = e.target ? eval(*e.target) : *block_input_;
        return apply_filter(e.name, input, eval_args(e), env_);
      }
      case ExprKind::test: {
        const Value input = eval(*e.target);
        return Value::boolean(apply_test(e.name, input, eval_args(e)));
      }
      case ExprKind::unary: {
        const Value v = eval(*e.target);
        return e.name == "not" ? Value::boolean(!truthy(v)) : unary_op(e.name, v);
      }
      case ExprKind::binary: {
        const Value a = eval(*e.args[0]);
        return binary_op(e.name, a, eval(*e.args[1]));
      }
      case ExprKind::and_: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case ExprKind::or_: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case ExprKind::compare: {
        Value left = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          if (!compare(e.ops[i], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::concat: {
        TextBuilder s;
        for (const ExprPtr& a : e.args) s.append(eval(*a));
        return s.take();
      }
      case ExprKind::condexpr: {
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
      }
    }
    return {};
  }

  static bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "<") return less(a, b);
    if (op == ">") return less(b, a);
    if (op == "<=") return less(a, b) || equal(a, b);
    if (op == ">=") return less(b, a) || equal(a, b);
    if (op == "in") return contains(b, a);
    return !contains(b, a);  // notin
  }
};

size_t LoopState::pull() {
  while (next_src < items.size()) {
    const size_t i = next_src++;
    if (!filter || interp->passes_filter(*this, items[i])) return i;
  }
  if (error) {
    const Fault f = *error;
    error.reset();
    throw f;
  }
  return kNone;
}

size_t LoopState::fetch() {
  if (ahead.empty()) return pull();
  const size_t i = ahead.front();
  ahead.pop_front();
  return i;
}

size_t LoopState::peek() {
  if (ahead.empty()) {
    const size_t i = pull();
    if (i == kNone) return kNone;
    ahead.push_back(i);
  }
  return ahead.front();
}

int64_t LoopState::length() {
  if (!filter && !error) return static_cast<int64_t>(items.size());
  for (size_t i; (i = pull()) != kNone;) ahead.push_back(i);
  return index0 + 1 + static_cast<int64_t>(ahead.size());
}

}  // namespace

std::string loop_repr(const Value& v) {
  LoopState& loop = v.as<LoopState>();
  return "<LoopContext " + std::to_string(loop.index0 + 1) + "/" + std::to_string(loop.length()) + ">";
}

Rendered render_program(const Program& program, std::vector<std::pair<std::string, Value>> context, const Env& env) {
  RenderBudget budget;  // this thread's, for the rendering
  Interpreter interp(program, std::move(context), env);
  return interp.run();
}

}  // namespace moerun::chat
