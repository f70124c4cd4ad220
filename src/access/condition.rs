//! `when` conditions of client rules: CEL expressions (the `cel` crate) over what a call does.
//!
//! An expression is compiled once, when the policy loads ([`Condition::compile`]); what cannot
//! run is refused there with its position in the expression: a syntax error, a name that is not
//! one of [`VARIABLES`], a result that cannot be a boolean, an operator applied to values of the
//! wrong type. Its cost is bounded at load too: the text's length ([`MAX_SOURCE`]), its number
//! of nodes ([`MAX_NODES`]) and nesting ([`MAX_DEPTH`]), and no macro (`all`, `exists`, `map`,
//! `filter`) inside another, so that evaluating it costs at most its size times the size of
//! the arguments, which [`args_value`] caps at [`MAX_ARG_VALUES`] values.
//!
//! At run time ([`Condition::eval`]) an error (a missing field, a wrong type) is an answer of
//! its own, [`Evaluated::Error`], which the rules turn into a refusal: a condition never grants
//! by failing. The crate is not trusted not to panic: compilation and evaluation run under
//! `catch_unwind`, and a panic is an error like any other.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

/// The names an expression may use.
pub const VARIABLES: [&str; 8] = [
    "args", "client", "server", "tool", "prompt", "uri", "method", "now",
];
/// Longest expression text, in bytes.
pub const MAX_SOURCE: usize = 2048;
/// Most nodes in a parsed expression (after its macros are expanded).
pub const MAX_NODES: usize = 400;
/// Deepest nesting of a parsed expression.
pub const MAX_DEPTH: usize = 32;
/// Most values (of any kind, at any depth) of a call's arguments a condition looks at; a call
/// with more is refused by the rules that would have to judge it.
pub const MAX_ARG_VALUES: usize = 10_000;
const MAX_ARG_DEPTH: usize = 32;
/// The stack the parser runs on.
const PARSE_STACK: usize = 16 << 20;

/// Why an expression was refused at load: the message, and where in the expression (1-based
/// line and column, in characters) when the problem has a place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
    pub at: Option<(usize, usize)>,
}

/// A compiled `when` expression.
pub struct Condition {
    program: Program,
    source: Arc<str>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({:?})", self.source)
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What a condition is evaluated on: the facts of one call.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub client: &'a str,
    /// The client's verified JWT claims (an object), when it authenticated with a JWT.
    pub claims: Option<&'a Value>,
    pub server: &'a str,
    pub tool: &'a str,
    pub prompt: &'a str,
    pub uri: &'a str,
    pub method: &'a str,
    /// The call's arguments (an object), `None` for a request without any.
    pub args: Option<&'a Value>,
}

/// The answer of a condition for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    True,
    False,
    /// It could not be evaluated on this call; the text says why.
    Error(String),
}

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

impl Condition {
    /// Compiles `source`, refusing what could not run or could cost without bound.
    pub fn compile(source: &str) -> Result<Condition, CompileError> {
        let plain = |message: String| CompileError { message, at: None };
        if source.trim().is_empty() {
            return Err(plain("the condition is empty; write a CEL expression such as `args.branch != \"main\"`, or remove `when`".into()));
        }
        if source.len() > MAX_SOURCE {
            return Err(plain(format!(
                "the condition is {} bytes long, more than the {MAX_SOURCE} allowed; split the rule",
                source.len()
            )));
        }
        // The parser recurses per nesting level: its own limit stops it early, and it runs on
        // a thread with a known stack, whatever thread loads the policy (a runtime worker's
        // stack is small).
        let owned = source.to_owned();
        let parsed = std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(PARSE_STACK)
            .spawn(move || {
                catch_unwind(AssertUnwindSafe(|| {
                    let depth = u16::try_from(MAX_DEPTH).unwrap_or(u16::MAX);
                    cel::parser::Parser::new()
                        .max_recursion_depth(depth)
                        .parse(&owned)?;
                    env().compile(&owned)
                }))
            })
            .map_err(|e| plain(format!("cannot start the CEL compiler: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(Box::new("panicked")));
        let program = match parsed {
            Ok(Ok(p)) => p,
            Ok(Err(errors)) => {
                let first = errors.errors.first();
                let at = first.map(|e| {
                    let (line, col) = e.pos;
                    (
                        usize::try_from(line).unwrap_or(1).max(1),
                        usize::try_from(col).unwrap_or(0) + 1,
                    )
                });
                let msg = first.map_or_else(|| "syntax error".to_owned(), |e| e.msg.clone());
                return Err(CompileError {
                    message: format!("CEL syntax error: {msg}"),
                    at,
                });
            }
            Err(_) => return Err(plain("the CEL parser failed on this expression".into())),
        };
        let at = |id: u64| position(source, program.source_info().offset_for(id));
        let mut shape = Shape::default();
        walk(program.expression(), 1, 0, &mut Vec::new(), &mut shape);
        if let Some((id, name)) = shape.unknown.first() {
            return Err(CompileError {
                message: format!(
                    "unknown variable `{name}`; a condition may use {}",
                    VARIABLES.join(", ")
                ),
                at: at(*id),
            });
        }
        if shape.nodes > MAX_NODES {
            return Err(plain(format!(
                "the condition has {} parts, more than the {MAX_NODES} allowed; split the rule",
                shape.nodes
            )));
        }
        if let Some(id) = shape.too_deep {
            return Err(CompileError {
                message: format!("the condition nests deeper than {MAX_DEPTH} levels"),
                at: at(id),
            });
        }
        if let Some(id) = shape.nested_macro {
            return Err(CompileError {
                message: "a macro (all, exists, exists_one, map, filter) inside another is not allowed: its cost would grow with the square of the arguments".into(),
                at: at(id),
            });
        }
        let condition = Condition {
            program,
            source: Arc::from(source),
        };
        condition.check_types()?;
        Ok(condition)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition on a call's prepared facts. Anything but a boolean is an error.
    pub fn eval(&self, facts: &Prepared) -> Evaluated {
        let mut ctx = Context::with_env(env());
        for (name, v) in &facts.vars {
            ctx.add_variable_from_value(*name, v.clone());
        }
        match catch_unwind(AssertUnwindSafe(|| self.program.execute(&ctx))) {
            Ok(Ok(Cel::Bool(true))) => Evaluated::True,
            Ok(Ok(Cel::Bool(false))) => Evaluated::False,
            Ok(Ok(other)) => Evaluated::Error(format!(
                "the condition gave {}, not true or false",
                other.type_of()
            )),
            Ok(Err(e)) => Evaluated::Error(e.to_string()),
            Err(_) => Evaluated::Error("the condition's evaluation failed".into()),
        }
    }

    /// A trial run on a call with empty arguments and claims: what fails there for another
    /// reason than a missing field is a type error that every call would hit.
    fn check_types(&self) -> Result<(), CompileError> {
        let empty = Value::Object(serde_json::Map::new());
        let facts = Facts {
            client: "",
            claims: Some(&empty),
            server: "",
            tool: "",
            prompt: "",
            uri: "",
            method: "",
            args: Some(&empty),
        };
        let prepared =
            Prepared::new(&facts).map_err(|message| CompileError { message, at: None })?;
        let ctx_error = match self.eval(&prepared) {
            Evaluated::True | Evaluated::False => return Ok(()),
            Evaluated::Error(e) => e,
        };
        // A missing key is about the empty sample, not the expression.
        if ctx_error.starts_with("No such key") {
            return Ok(());
        }
        let typed = ctx_error.contains("not true or false")
            || ctx_error.contains("Unsupported binary operator")
            || ctx_error.contains("No such overload")
            || ctx_error.contains("can not be compared")
            || ctx_error.starts_with("Undeclared reference");
        if typed {
            return Err(CompileError {
                message: format!("CEL type error: {ctx_error}"),
                at: None,
            });
        }
        Ok(())
    }
}

/// A call's facts as CEL values, made once per decision and shared by every condition of it.
pub struct Prepared {
    vars: Vec<(&'static str, Cel)>,
}

impl Prepared {
    /// Fails when the arguments are too large to judge ([`MAX_ARG_VALUES`]).
    pub fn new(facts: &Facts) -> Result<Prepared, String> {
        let empty = || Cel::Map(HashMap::<String, Cel>::new().into());
        let args = match facts.args {
            Some(a) => args_value(a)?,
            None => empty(),
        };
        let claims = match facts.claims {
            Some(c) => args_value(c).unwrap_or(Cel::Null),
            None => empty(),
        };
        let client: HashMap<String, Cel> = [
            ("name".to_owned(), Cel::from(facts.client)),
            ("claims".to_owned(), claims),
        ]
        .into_iter()
        .collect();
        let mut vars = vec![("args", args), ("client", Cel::from(client))];
        for (name, v) in [
            ("server", facts.server),
            ("tool", facts.tool),
            ("prompt", facts.prompt),
            ("uri", facts.uri),
            ("method", facts.method),
        ] {
            vars.push((name, Cel::from(v)));
        }
        vars.push(("now", Cel::Timestamp(chrono::Utc::now().fixed_offset())));
        Ok(Prepared { vars })
    }
}

/// Line and column (1-based, characters) of byte `offset` of `source`.
fn position(source: &str, offset: Option<(u32, u32)>) -> Option<(usize, usize)> {
    let (start, _) = offset?;
    let start = usize::try_from(start).ok()?;
    let (mut line, mut col) = (1, 1);
    for (i, c) in source.char_indices() {
        if i >= start {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    Some((line, col))
}

#[derive(Default)]
struct Shape {
    nodes: usize,
    unknown: Vec<(u64, String)>,
    too_deep: Option<u64>,
    nested_macro: Option<u64>,
}

/// Counts nodes and finds unknown names, excess depth and nested macros. Recursion is bounded
/// by the parser's own nesting limit, and stops below [`MAX_DEPTH`].
fn walk(e: &IdedExpr, depth: usize, macros: usize, scope: &mut Vec<String>, s: &mut Shape) {
    s.nodes += 1;
    if depth > MAX_DEPTH {
        s.too_deep.get_or_insert(e.id);
        return;
    }
    let d = depth + 1;
    match &e.expr {
        Expr::Ident(name) => {
            if !VARIABLES.contains(&name.as_str()) && !scope.iter().any(|v| v == name) {
                s.unknown.push((e.id, name.clone()));
            }
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, d, macros, scope, s);
            }
            for a in &c.args {
                walk(a, d, macros, scope, s);
            }
        }
        Expr::Select(sel) => walk(&sel.operand, d, macros, scope, s),
        Expr::List(l) => {
            for el in &l.elements {
                walk(el, d, macros, scope, s);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, d, macros, scope, s);
                    walk(&me.value, d, macros, scope, s);
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, d, macros, scope, s);
                }
            }
        }
        Expr::Comprehension(c) => {
            if macros > 0 {
                s.nested_macro.get_or_insert(e.id);
            }
            walk(&c.iter_range, d, macros, scope, s);
            walk(&c.accu_init, d, macros, scope, s);
            let bound = scope.len();
            scope.push(c.iter_var.clone());
            scope.extend(c.iter_var2.clone());
            scope.push(c.accu_var.clone());
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                walk(part, d, macros + 1, scope, s);
            }
            scope.truncate(bound);
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// A JSON value as CEL sees it; refused when it has more than [`MAX_ARG_VALUES`] values or
/// nests deeper than 32.
pub fn args_value(v: &Value) -> Result<Cel, String> {
    let mut budget = MAX_ARG_VALUES;
    convert(v, 0, &mut budget).ok_or_else(|| {
        format!("the arguments are too large for a condition to judge (more than {MAX_ARG_VALUES} values, or nested deeper than {MAX_ARG_DEPTH})")
    })
}

fn convert(v: &Value, depth: usize, budget: &mut usize) -> Option<Cel> {
    *budget = budget.checked_sub(1)?;
    if depth > MAX_ARG_DEPTH {
        return None;
    }
    Some(match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::from(s.as_str()),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len().min(*budget));
            for x in a {
                out.push(convert(x, depth + 1, budget)?);
            }
            Cel::List(Arc::new(out))
        }
        Value::Object(m) => {
            let mut out = HashMap::with_capacity(m.len().min(*budget));
            for (k, x) in m {
                out.insert(k.clone(), convert(x, depth + 1, budget)?);
            }
            Cel::Map(out.into())
        }
    })
}

#[cfg(test)]
mod tests;
