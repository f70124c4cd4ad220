use serde_json::json;

use super::*;

fn facts<'a>(args: &'a Value, claims: Option<&'a Value>) -> Facts<'a> {
    Facts {
        client: "bob",
        claims,
        server: "git",
        tool: "git_push",
        prompt: "",
        uri: "",
        method: "tools/call",
        args: Some(args),
    }
}

/// As the gateway evaluates it: converting only the arguments the condition can read.
fn eval(src: &str, args: Value) -> Evaluated {
    let c = Condition::compile(src).unwrap();
    let prepared = Prepared::reading(&facts(&args, None), c.args_use()).unwrap();
    c.eval(&prepared)
}

#[test]
fn conditions_see_the_arguments_and_the_call() {
    let branch = r#"args.branch in ["main", "release"]"#;
    assert_eq!(eval(branch, json!({"branch": "main"})), Evaluated::True);
    assert_eq!(eval(branch, json!({"branch": "dev"})), Evaluated::False);
    let url = r#"args.url.startsWith("https://docs.example.com/")"#;
    assert_eq!(
        eval(url, json!({"url": "https://docs.example.com/a"})),
        Evaluated::True
    );
    assert_eq!(
        eval(url, json!({"url": "https://evil.example/"})),
        Evaluated::False
    );
    assert_eq!(
        eval(
            r#"server == "git" && tool == "git_push" && method == "tools/call" && client.name == "bob" && prompt == "" && uri == """#,
            json!({})
        ),
        Evaluated::True
    );
    assert_eq!(
        eval("now > timestamp('2020-01-01T00:00:00Z')", json!({})),
        Evaluated::True
    );
    assert_eq!(
        eval(
            "args.paths.all(p, p.startsWith('/workspace/'))",
            json!({"paths": ["/workspace/a", "/workspace/b"]})
        ),
        Evaluated::True
    );
    assert_eq!(
        eval(
            "args.paths.all(p, p.startsWith('/workspace/'))",
            json!({"paths": ["/workspace/a", "/etc/passwd"]})
        ),
        Evaluated::False
    );
    assert_eq!(
        eval(
            "args.n > 3 && args.big > 1",
            json!({"n": 4, "big": u64::MAX})
        ),
        Evaluated::True
    );
}

#[test]
fn claims_are_visible_when_the_client_used_a_jwt() {
    let c = Condition::compile(r#"client.claims.team == "platform""#).unwrap();
    let claims = json!({"team": "platform"});
    let args = json!({});
    assert_eq!(
        c.eval(&Prepared::new(&facts(&args, Some(&claims))).unwrap()),
        Evaluated::True
    );
    assert!(matches!(
        c.eval(&Prepared::new(&facts(&args, None)).unwrap()),
        Evaluated::Error(_)
    ));
}

#[test]
fn run_time_failures_are_errors_not_answers() {
    for (src, args) in [
        ("args.branch == 'main'", json!({})),
        ("args.n > 3", json!({"n": "four"})),
        ("args.s.startsWith('x')", json!({"s": 5})),
        ("args.n / args.zero > 1", json!({"n": 1, "zero": 0})),
        ("args.x", json!({"x": "not a bool"})),
    ] {
        assert!(
            matches!(eval(src, args.clone()), Evaluated::Error(_)),
            "{src} on {args}"
        );
    }
}

#[test]
fn bad_expressions_are_refused_at_load_with_a_position() {
    let e = Condition::compile("args.branch ==").unwrap_err();
    assert!(e.message.contains("syntax"), "{e:?}");
    assert!(e.at.is_some());
    let e = Condition::compile("arg.branch == 'main'").unwrap_err();
    assert!(e.message.contains("unknown variable `arg`"), "{e:?}");
    assert_eq!(e.at, Some((1, 1)));
    let e = Condition::compile("args.x == 1 || bogus").unwrap_err();
    assert_eq!(e.at, Some((1, 16)), "{e:?}");
    let e = Condition::compile("tool + 1 == 2").unwrap_err();
    assert!(e.message.contains("type error"), "{e:?}");
    let e = Condition::compile("'a string'").unwrap_err();
    assert!(e.message.contains("not true or false"), "{e:?}");
    assert!(Condition::compile("").is_err());
    assert!(Condition::compile(&"a".repeat(MAX_SOURCE + 1)).is_err());
    // Comprehension variables are in scope inside their macro only.
    assert!(Condition::compile("args.l.exists(x, x == 1)").is_ok());
    assert!(Condition::compile("args.l.exists(x, x == 1) && x == 2").is_err());
}

#[test]
fn cost_is_bounded_at_load() {
    let nested = "args.a.all(x, args.b.all(y, x == y))";
    let e = Condition::compile(nested).unwrap_err();
    assert!(e.message.contains("inside another"), "{e:?}");
    let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    assert!(Condition::compile(&deep).is_err());
    let wide = vec!["args.a == 1"; 150].join(" || ");
    assert!(Condition::compile(&wide).is_err());
    let many = json!({"l": vec![0; MAX_ARG_VALUES + 1]});
    assert!(Prepared::new(&facts(&many, None)).is_err());
}

#[test]
fn hostile_sources_never_panic() {
    for src in [
        "\u{0}",
        "'",
        "\"\"\"",
        "a.",
        ".a",
        "[",
        "{",
        "1 ? 2",
        "args[",
        "args.b(",
        "💥 == 1",
        "args.l.map(",
        "has(",
        "has(args)",
        "size()",
        "0x",
        "1e99999 > 0",
        "b'\\xff' == b''",
        "'\\u12'",
        "args.map(x, x)",
        "[].all(x, x)",
        "{}.exists(k, k)",
        "dyn(",
        "int('x') == 1",
    ] {
        let _ = Condition::compile(src);
    }
    if let Ok(c) =
        Condition::compile("int(args.s) == 1 || double(args.s) > 0.0 || args.s.matches(args.re)")
    {
        let args = json!({"s": "9999999999999999999999", "re": "("});
        let _ = c.eval(&Prepared::new(&facts(&args, None)).unwrap());
    }
}

#[test]
fn the_recipes_of_the_policy_reference_compile() {
    let readme = include_str!("../../../policy/README.md");
    let mut seen = 0;
    for line in readme.lines() {
        if let Some(src) = line
            .strip_prefix("when = '")
            .and_then(|l| l.strip_suffix('\''))
        {
            Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            seen += 1;
        }
    }
    assert!(seen >= 5, "{seen} recipes");
    let read_only = Condition::compile(r#"!args.sql.matches("(?i)^\\s*select\\b")"#).unwrap();
    let on = |sql: &str| {
        let args = json!({ "sql": sql });
        let prepared = Prepared::new(&facts(&args, None)).unwrap();
        read_only.eval(&prepared)
    };
    assert_eq!(on("  SELECT * FROM t"), Evaluated::False);
    assert_eq!(on("drop table t"), Evaluated::True);
}

fn uses(src: &str) -> (bool, Vec<String>) {
    let c = Condition::compile(src).unwrap();
    let u = c.args_use();
    (u.whole, u.fields.iter().cloned().collect())
}

#[test]
fn the_fields_a_condition_can_read_are_found_at_load() {
    let fields = |v: &[&str]| (false, v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        uses(r#"args.url.startsWith("https://a/")"#),
        fields(&["url"])
    );
    assert_eq!(uses("has(args.x) && args.y == 1"), fields(&["x", "y"]));
    assert_eq!(uses("args.a.b == 1 && tool == \"t\""), fields(&["a"]));
    assert_eq!(
        uses("[1, 2].exists(args, args > 1)"),
        fields(&[]),
        "a bound name"
    );
    assert_eq!(
        uses("args.list.exists(x, x == args.k)"),
        fields(&["k", "list"])
    );
    for whole in [
        "size(args) > 0",
        r#"args["url"] == "x""#,
        "args == {}",
        "args.a == 1 || [args].size() == 1",
        r#""url" in args"#,
        "args.list.exists(x, size(args) > 0)",
    ] {
        assert!(uses(whole).0, "{whole} reads the whole arguments");
    }
}

/// Converting only the selected fields answers every condition exactly as converting them all.
#[test]
fn reading_only_the_selected_fields_answers_as_reading_all() {
    let args = json!({"url": "https://docs.example.com/a", "branch": "main", "n": 3,
        "nested": {"deep": [1, 2, {"k": "v"}]}, "big": "x".repeat(1000), "list": [1, 2, 3]});
    for src in [
        r#"args.url.startsWith("https://docs.example.com/")"#,
        r#"args.branch in ["main", "release"]"#,
        "has(args.missing)",
        "has(args.n) && args.n > 2",
        "args.missing == 1",
        "args.nested.deep[2].k == \"v\"",
        "args.nested.deep.size() == 3",
        "args.list.exists(x, x == args.n)",
        "args.n + 1",
        "size(args) == 6",
    ] {
        let c = Condition::compile(src).unwrap();
        let partial = c.eval(&Prepared::reading(&facts(&args, None), c.args_use()).unwrap());
        let whole = c.eval(&Prepared::new(&facts(&args, None)).unwrap());
        assert_eq!(partial, whole, "{src}");
    }
}

#[test]
fn fields_no_condition_reads_are_never_converted() {
    let mut m = serde_json::Map::new();
    for i in 0..1000 {
        m.insert(format!("f{i}"), json!(i));
    }
    m.insert("url".into(), json!("https://a/"));
    let args = Value::Object(m);
    let converted = std::cell::RefCell::new(Vec::new());
    let read_url = Condition::compile("args.url == \"x\"").unwrap();
    let seen = read_url.args_use().view(&args, recording(&converted));
    assert_eq!(
        *converted.borrow(),
        vec![json!("https://a/")],
        "only `url` is converted"
    );
    drop(seen);
    let whole = read_url.eval(&Prepared::new(&facts(&args, None)).unwrap());
    let prepared = Prepared::reading(&facts(&args, None), read_url.args_use()).unwrap();
    assert_eq!(
        (whole, read_url.eval(&prepared)),
        (Evaluated::False, Evaluated::False)
    );
}

/// A conversion that notes each value it is given.
fn recording<'a>(
    seen: &'a std::cell::RefCell<Vec<Value>>,
) -> impl Fn(&'a Value) -> Box<dyn Val + 'a> {
    move |v| {
        seen.borrow_mut().push(v.clone());
        view(v)
    }
}
