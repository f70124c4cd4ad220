//! Unit tests of `catalog.rs`: merging and routing, pagination cursors, what each client sees.

use super::*;
use serde_json::json;

fn tools(names: &[&str]) -> Vec<Map<String, Value>> {
    names
        .iter()
        .map(|n| {
            json!({"name": n, "inputSchema": {"type": "object"}})
                .as_object()
                .cloned()
                .unwrap()
        })
        .collect()
}

#[test]
fn merges_and_routes_with_prefixes() {
    let c = Catalog::new(true, HashMap::new());
    let a: Arc<str> = Arc::from("a");
    let b: Arc<str> = Arc::from("b");
    assert!(c.set(&a, Kind::Tools, tools(&["x", "y"]), vec![]));
    assert!(c.set(&b, Kind::Tools, tools(&["x"]), vec![]));
    let agg = c.snapshot();
    assert_eq!(agg.tool("a__x").unwrap().name, "x");
    assert_eq!(&*agg.tool("b__x").unwrap().server, "b");
    assert!(agg.tool("x").is_none());
    // Setting the same list again is not a change.
    assert!(!c.set(&b, Kind::Tools, tools(&["x"]), vec![]));
}

#[test]
fn paginates_with_opaque_cursors() {
    let c = Catalog::new(false, HashMap::new());
    let a: Arc<str> = Arc::from("a");
    c.set(&a, Kind::Tools, tools(&["t1", "t2", "t3"]), vec![]);
    let p1: Value =
        serde_json::from_str(c.page(Kind::Tools, None, 2, &|_| true).unwrap().get()).unwrap();
    assert_eq!(p1["tools"].as_array().unwrap().len(), 2);
    let cur = p1["nextCursor"].as_str().unwrap();
    let p2: Value =
        serde_json::from_str(c.page(Kind::Tools, Some(cur), 2, &|_| true).unwrap().get()).unwrap();
    assert_eq!(p2["tools"][0]["name"], "t3");
    assert!(p2.get("nextCursor").is_none());
    assert!(c.page(Kind::Tools, Some("garbage"), 2, &|_| true).is_err());
    assert!(
        c.page(Kind::Prompts, Some(cur), 2, &|_| true).is_err(),
        "cursor of another list"
    );
    c.set(&a, Kind::Tools, tools(&["t1"]), vec![]);
    assert!(
        c.page(Kind::Tools, Some(cur), 2, &|_| true).is_err(),
        "cursor of an older catalog"
    );
}

#[test]
fn policy_filter_hides_tools() {
    let mut f = HashMap::new();
    f.insert(
        "a".to_owned(),
        ToolFilter {
            allow: vec![],
            deny: vec!["danger*".into()],
        },
    );
    let c = Catalog::new(true, f);
    let a: Arc<str> = Arc::from("a");
    c.set(&a, Kind::Tools, tools(&["safe", "danger_zone"]), vec![]);
    let agg = c.snapshot();
    assert!(agg.tool("a__safe").is_some());
    assert!(agg.tool("a__danger_zone").is_none());
    assert_eq!(agg.len(Kind::Tools), 1);
}

#[test]
fn views_differ_only_for_clients_whose_visible_list_changed() {
    let c = Catalog::new(true, HashMap::new());
    let a: Arc<str> = Arc::from("a");
    c.set(&a, Kind::Tools, tools(&["x", "y"]), vec![]);
    let before = c.snapshot();
    let all = |_: &Target| true;
    let only_x = |t: &Target| t.item() == "x";
    assert!(before.same_view(&before, Kind::Tools, &all, &all));
    assert!(!before.same_view(&before, Kind::Tools, &all, &only_x));
    // A tool filter hides `y`: who saw it is affected, who only saw `x` is not.
    let mut f = HashMap::new();
    f.insert(
        "a".to_owned(),
        ToolFilter {
            allow: vec![],
            deny: vec!["y".into()],
        },
    );
    c.reconfigure(true, f, &[]);
    let after = c.snapshot();
    assert!(!before.same_view(&after, Kind::Tools, &all, &all));
    assert!(before.same_view(&after, Kind::Tools, &only_x, &only_x));
    assert!(before.same_view(&after, Kind::Prompts, &all, &all));
    // Unprefixed names change every entry; a removed server empties its lists.
    c.reconfigure(false, HashMap::new(), &[]);
    assert!(c.snapshot().tool("x").is_some());
    c.reconfigure(false, HashMap::new(), &["a".to_owned()]);
    assert_eq!(c.snapshot().len(Kind::Tools), 0);
}

#[test]
fn routes_resources_by_uri_and_template() {
    let c = Catalog::new(true, HashMap::new());
    let a: Arc<str> = Arc::from("a");
    c.set(
        &a,
        Kind::Resources,
        vec![json!({"uri": "test://static"})
            .as_object()
            .cloned()
            .unwrap()],
        vec![],
    );
    c.set(
        &a,
        Kind::Templates,
        vec![json!({"uriTemplate": "test://t/{id}"})
            .as_object()
            .cloned()
            .unwrap()],
        vec![Withheld {
            id: "test://w/{id}".into(),
            reason: "changed".into(),
        }],
    );
    let agg = c.snapshot();
    assert_eq!(
        agg.resource_server("test://static").map(|s| &**s),
        Some("a")
    );
    assert_eq!(agg.resource_server("test://t/9").map(|s| &**s), Some("a"));
    assert!(agg.resource_server("test://nope").is_none());
    assert!(agg.resource_server("test://w/1").is_none());
    assert_eq!(
        agg.withheld_template("test://w/1").map(|x| x.1),
        Some("changed")
    );
}

#[test]
fn withheld_names_follow_naming_and_filters() {
    let mut f = HashMap::new();
    f.insert(
        "a".to_owned(),
        ToolFilter {
            allow: vec![],
            deny: vec!["hidden".into()],
        },
    );
    let c = Catalog::new(true, f);
    let a: Arc<str> = Arc::from("a");
    let w = |id: &str| Withheld {
        id: id.into(),
        reason: format!("{id} changed"),
    };
    c.set(&a, Kind::Tools, tools(&["x"]), vec![w("y"), w("hidden")]);
    let agg = c.snapshot();
    assert!(agg.tool("a__y").is_none(), "withheld tools are not routed");
    assert_eq!(
        agg.withheld(Kind::Tools, "a__y").map(|x| x.1),
        Some("y changed")
    );
    assert!(agg.withheld(Kind::Tools, "a__hidden").is_none());
    assert!(agg.withheld(Kind::Prompts, "a__y").is_none());
    c.reconfigure(false, HashMap::new(), &[]);
    assert!(c.snapshot().withheld(Kind::Tools, "y").is_some());
    c.reconfigure(false, HashMap::new(), &["a".to_owned()]);
    assert!(c.snapshot().withheld(Kind::Tools, "y").is_none());
}

fn items(kind: &str, values: &[&str]) -> Vec<Map<String, Value>> {
    values
        .iter()
        .map(|v| json!({ kind: v }).as_object().cloned().unwrap())
        .collect()
}

fn shown(c: &Catalog, kind: Kind, visible: &dyn Fn(&Target) -> bool) -> Vec<String> {
    let page: Value =
        serde_json::from_str(c.page(kind, None, 100, visible).unwrap().get()).unwrap();
    let key = match kind {
        Kind::Tools | Kind::Prompts => "name",
        Kind::Resources => "uri",
        Kind::Templates => "uriTemplate",
    };
    page[kind.result_key()]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[key].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_list_kind_is_filtered_by_its_own_targets() {
    let c = Catalog::new(true, HashMap::new());
    let ev: Arc<str> = Arc::from("ev");
    let time: Arc<str> = Arc::from("time");
    c.set(&ev, Kind::Tools, tools(&["echo"]), vec![]);
    c.set(&time, Kind::Tools, tools(&["now"]), vec![]);
    c.set(
        &ev,
        Kind::Prompts,
        items("name", &["simple", "complex"]),
        vec![],
    );
    c.set(
        &ev,
        Kind::Resources,
        items("uri", &["demo://static/a", "demo://other/b"]),
        vec![],
    );
    c.set(
        &ev,
        Kind::Templates,
        items("uriTemplate", &["demo://static/{id}"]),
        vec![],
    );
    let rules = crate::access::Rules::compile(
        &[
            "time__*".into(),
            "ev__demo://static/*".into(),
            "ev__simple".into(),
        ],
        &[],
    );
    let visible = |t: &Target| rules.allows(t);
    assert_eq!(shown(&c, Kind::Tools, &visible), vec!["time__now"]);
    assert_eq!(shown(&c, Kind::Prompts, &visible), vec!["ev__simple"]);
    assert_eq!(
        shown(&c, Kind::Resources, &visible),
        vec!["demo://static/a"]
    );
    assert_eq!(
        shown(&c, Kind::Templates, &visible),
        vec!["demo://static/{id}"]
    );
    let none = crate::access::Rules::nothing();
    for kind in KINDS {
        assert!(shown(&c, kind, &|t| none.allows(t)).is_empty(), "{kind:?}");
    }
    let agg = c.snapshot();
    assert_eq!(
        agg.resource_server("demo://static/{id}").map(|s| &**s),
        Some("ev"),
        "a completion names the template itself"
    );
}
