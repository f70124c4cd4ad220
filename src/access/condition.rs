//! `when` conditions of client rules: CEL expressions (the `cel` crate) over what a call does.
//!
//! An expression is compiled once, when the policy loads ([`Condition::compile`]); what cannot
//! run is refused there with its position in the expression: a syntax error, a name that is not
//! one of [`VARIABLES`], a result that cannot be a boolean, an operator applied to values of the
//! wrong type. Its cost is bounded at load too: the text's length ([`MAX_SOURCE`]), its number
//! of nodes ([`MAX_NODES`]) and nesting ([`MAX_DEPTH`]), and no macro (`all`, `exists`, `map`,
//! `filter`) inside another, so that evaluating it costs at most its size times the size of
//! the arguments, which [`within_budget`] caps at [`MAX_ARG_VALUES`] values.
//!
//! At run time ([`Condition::eval`]) an error (a missing field, a wrong type) is an answer of
//! its own, [`Evaluated::Error`], which the rules turn into a refusal: a condition never grants
//! by failing. The crate is not trusted not to panic: compilation and evaluation run under
//! `catch_unwind`, and a panic is an error like any other.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

mod args_use;
pub use args_use::ArgsUse;

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
    /// What of the arguments it can read (see `args_use.rs`).
    args_use: ArgsUse,
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
            args_use: shape.args,
        };
        condition.check_types()?;
        Ok(condition)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What of a call's arguments it can read.
    pub fn args_use(&self) -> &ArgsUse {
        &self.args_use
    }

    /// Evaluates the condition on a call's prepared facts. Anything but a boolean is an error.
    pub fn eval(&self, facts: &Prepared) -> Evaluated {
        // A context per evaluation costs an `Arc` clone and two empty maps; the variables
        // themselves are the prepared facts', borrowed (see [`Prepared`]).
        let mut ctx = Context::with_env(env());
        ctx.set_variable_resolver(facts);
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

/// A call's facts as CEL sees them, shared by every condition of one decision.
///
/// Each variable is made on its first lookup and kept for the decision's other conditions, so
/// a decision pays only for the variables its conditions name (`now` reads the clock only when
/// used; `client.claims` is converted only when named). Values borrow the call's strings
/// rather than copying them: the arguments of a call become a tree of CEL values whose strings
/// are the request's own. Before this, every condition converted every variable (the whole
/// arguments, deep-copied) into a fresh context.
pub struct Prepared<'a> {
    facts: Facts<'a>,
    /// What of the arguments the decision's conditions can read: only that is converted.
    args_use: &'a ArgsUse,
    vars: [OnceLock<Box<dyn Val + 'a>>; VARIABLES.len()],
}

static ALL_ARGS: OnceLock<ArgsUse> = OnceLock::new();

impl<'a> Prepared<'a> {
    /// Fails when the arguments are too large to judge ([`MAX_ARG_VALUES`]); this is counted
    /// here, without converting anything, so that a condition sees either all of them or none.
    pub fn new(facts: &Facts<'a>) -> Result<Prepared<'a>, String> {
        Prepared::reading(facts, ALL_ARGS.get_or_init(ArgsUse::all))
    }

    /// [`Prepared::new`] for conditions that together read `args_use` of the arguments (the
    /// union over every condition the decision may evaluate): the rest is never converted.
    /// The budget still counts all of them, so a call is judged or refused alike either way.
    pub fn reading(facts: &Facts<'a>, args_use: &'a ArgsUse) -> Result<Prepared<'a>, String> {
        if let Some(a) = facts.args {
            within_budget(a)?;
        }
        Ok(Prepared {
            facts: *facts,
            args_use,
            vars: Default::default(),
        })
    }

    fn make(&self, index: usize) -> Box<dyn Val + 'a> {
        let f = &self.facts;
        let empty = || -> Box<dyn Val + 'a> {
            Box::new(CelMap::from(
                HashMap::<CelMapKey<'a>, Box<dyn Val + 'a>>::new(),
            ))
        };
        let text = |s: &'a str| -> Box<dyn Val + 'a> { Box::new(CelString::from(s)) };
        match VARIABLES.get(index).copied() {
            Some("args") => f.args.map_or_else(empty, |a| self.args_use.view(a, view)),
            Some("client") => {
                let claims: Box<dyn Val + 'a> = match f.claims {
                    Some(c) if within_budget(c).is_ok() => view(c),
                    Some(_) => Box::new(CelNull),
                    None => empty(),
                };
                let mut m: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(2);
                m.insert(CelMapKey::from("name"), text(f.client));
                m.insert(CelMapKey::from("claims"), claims);
                Box::new(CelMap::from(m))
            }
            Some("server") => text(f.server),
            Some("tool") => text(f.tool),
            Some("prompt") => text(f.prompt),
            Some("uri") => text(f.uri),
            Some("method") => text(f.method),
            Some("now") => Box::new(CelTimestamp::from(chrono::Utc::now().fixed_offset())),
            _ => Box::new(CelNull),
        }
    }
}

impl VariableResolver for Prepared<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let index = VARIABLES.iter().position(|v| *v == variable)?;
        let value = self.vars.get(index)?.get_or_init(|| self.make(index));
        Some(CowVal::Borrowed(value.as_ref()))
    }
}

/// `v` as a CEL value borrowing its strings. Its size and depth were checked
/// ([`within_budget`]), which bounds this recursion.
fn view(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(view).collect::<Vec<_>>())),
        Value::Object(m) => Box::new(CelMap::from(
            m.iter()
                .map(|(k, x)| (CelMapKey::from(k.as_str()), view(x)))
                .collect::<HashMap<_, _>>(),
        )),
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
    args: ArgsUse,
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
            let bound = scope.iter().any(|v| v == name);
            if !VARIABLES.contains(&name.as_str()) && !bound {
                s.unknown.push((e.id, name.clone()));
            }
            // Reached here, `args` is used otherwise than by a field select.
            s.args.whole |= name == "args" && !bound;
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, d, macros, scope, s);
            }
            for a in &c.args {
                walk(a, d, macros, scope, s);
            }
        }
        Expr::Select(sel) => match &sel.operand.expr {
            Expr::Ident(name) if name == "args" && !scope.iter().any(|v| v == name) => {
                s.nodes += 1;
                s.args.fields.insert(sel.field.clone());
            }
            _ => walk(&sel.operand, d, macros, scope, s),
        },
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

/// Refuses a JSON value with more than [`MAX_ARG_VALUES`] values or nested deeper than 32,
/// which a condition will not judge (its cost would grow with it).
pub fn within_budget(v: &Value) -> Result<(), String> {
    let mut budget = MAX_ARG_VALUES;
    count(v, 0, &mut budget).ok_or_else(|| {
        format!("the arguments are too large for a condition to judge (more than {MAX_ARG_VALUES} values, or nested deeper than {MAX_ARG_DEPTH})")
    })
}

fn count(v: &Value, depth: usize, budget: &mut usize) -> Option<()> {
    *budget = budget.checked_sub(1)?;
    if depth > MAX_ARG_DEPTH {
        return None;
    }
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| count(x, depth + 1, budget)),
        Value::Object(m) => m.values().try_for_each(|x| count(x, depth + 1, budget)),
        _ => Some(()),
    }
}

#[cfg(test)]
mod tests;
