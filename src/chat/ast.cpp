#include "chat/ast.h"

namespace moerun::chat {

namespace {

bool is_leaf(const Expr& e) { return !e.target && e.args.empty() && e.kwargs.empty() && !e.star && !e.star_star; }

// Moves the children of `e` onto `work`, leaving `e` a leaf whose destructor has nothing to free.
void take_children(Expr& e, std::vector<ExprPtr>& work) {
  if (e.target) work.push_back(std::move(e.target));
  for (ExprPtr& a : e.args)
    if (a) work.push_back(std::move(a));
  e.args.clear();
  for (auto& kv : e.kwargs)
    if (kv.second) work.push_back(std::move(kv.second));
  e.kwargs.clear();
  if (e.star) work.push_back(std::move(e.star));
  if (e.star_star) work.push_back(std::move(e.star_star));
}

bool is_leaf(const Stmt& s) {
  return s.body.empty() && s.else_body.empty() && !(s.macro && !s.macro->body.empty());
}

// The same for statements: their bodies (an elif chain nests in else_body) and a macro's body. Their
// expressions are freed with them, each by ~Expr's own work list.
void take_children(Stmt& s, std::vector<StmtPtr>& work) {
  for (Body* body : {&s.body, &s.else_body, s.macro && s.macro.use_count() == 1 ? &s.macro->body : nullptr}) {
    if (!body) continue;
    for (StmtPtr& child : *body)
      if (child) work.push_back(std::move(child));
    body->clear();
  }
}

}  // namespace

Expr::~Expr() {
  if (is_leaf(*this)) return;
  std::vector<ExprPtr> work;
  take_children(*this, work);
  while (!work.empty()) {
    ExprPtr e = std::move(work.back());
    work.pop_back();
    take_children(*e, work);
  }  // each node is freed here, as a leaf
}

Stmt::~Stmt() {
  if (is_leaf(*this)) return;
  std::vector<StmtPtr> work;
  take_children(*this, work);
  while (!work.empty()) {
    StmtPtr s = std::move(work.back());
    work.pop_back();
    take_children(*s, work);
  }
}

int line_deeper_than(const Body& body, int limit) {
  struct Item {
    const Stmt* stmt;
    const Expr* expr;
    int depth;
  };
  std::vector<Item> work;
  auto push_body = [&](const Body& b, int depth) {
    for (const StmtPtr& s : b)
      if (s) work.push_back({s.get(), nullptr, depth});
  };
  auto push_expr = [&](const ExprPtr& e, int depth) {
    if (e) work.push_back({nullptr, e.get(), depth});
  };
  push_body(body, 1);
  while (!work.empty()) {
    const Item it = work.back();
    work.pop_back();
    if (it.depth > limit) return it.stmt ? it.stmt->line : it.expr->line;
    const int d = it.depth + 1;
    if (it.stmt) {
      const Stmt& s = *it.stmt;
      push_expr(s.expr, d);
      push_expr(s.filter, d);
      for (const auto& kv : s.with_vars) push_expr(kv.second, d);
      push_body(s.body, d);
      push_body(s.else_body, d);
      if (s.macro) {
        for (const auto& kv : s.macro->params) push_expr(kv.second, d);
        push_body(s.macro->body, d);
      }
    } else {
      const Expr& e = *it.expr;
      push_expr(e.target, d);
      for (const ExprPtr& a : e.args) push_expr(a, d);
      for (const auto& kv : e.kwargs) push_expr(kv.second, d);
      push_expr(e.star, d);
      push_expr(e.star_star, d);
    }
  }
  return 0;
}

}  // namespace moerun::chat
