//! REST APIs as MCP servers (`runtime = "openapi"`): a real FastAPI app on 127.0.0.1 with the
//! OpenAPI document FastAPI generates, and a 3.0 YAML document of our own for every parameter
//! style, driven through the gateway by a raw HTTP MCP client. Proves path/query/body round
//! trips, error statuses as tool errors, operations allow/deny, the egress check, redirects
//! refused off the base URL's origin, the response cap, timeouts, and that the API credential
//! is sent but never logged, audited or shown.

mod common;
mod oauth_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::rest::RestApi;
use common::Gateway;
use serde_json::{json, Value};

const SECRET: &str = "sk-openapi-test-9d3b7e51c2";

fn policy(spec: &Path, api: &RestApi, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "20s"

[audit]
dir = "{{tmp}}/audit"
record_arguments = true

[servers.pets]
runtime = "openapi"
spec = "{spec}"
base_url = "{url}"
headers = {{ Authorization = "Bearer ${{secret:API_TOKEN}}", X-Api-Client = "portcullis-test" }}
secrets = {{ API_TOKEN = "env:PETS_API_TOKEN" }}
egress = {{ allow = ["127.0.0.1/32:{port}"] }}
{extra}
"#,
        spec = spec.display(),
        url = api.url(),
        port = api.port,
    )
}

async fn client(gw: &Gateway) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    c
}

fn tools(list: &Value) -> Vec<&Value> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list}"))
        .iter()
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    tools(list)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn is_error(r: &Value) -> bool {
    r["result"]["isError"] == true
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.push_str(&all_text(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[tokio::test]
async fn fastapi_document_serves_its_operations_as_tools() {
    let Some(api) = RestApi::start("http://evil.invalid:9/stolen") else {
        return;
    };
    let spec = api.spec_file();
    let gw = Gateway::start_with(
        &policy(&spec, &api, "max_response_bytes = \"64KiB\""),
        &[("PETS_API_TOKEN", SECRET)],
    );
    let mut c = client(&gw).await;
    let list = c.request("tools/list", json!({})).await;
    let listed = names(&list);
    for n in [
        "listPets",
        "createPet",
        "getPet",
        "deletePet",
        "whoAmI",
        "redirectAway",
    ] {
        assert!(
            listed.contains(&n.to_owned()),
            "{n} missing from {listed:?}"
        );
    }
    let get = tools(&list)
        .into_iter()
        .find(|t| t["name"] == "getPet")
        .unwrap()
        .clone();
    assert_eq!(get["inputSchema"]["required"], json!(["pet_id"]));
    assert_eq!(get["outputSchema"]["properties"]["name"]["type"], "string");
    assert_eq!(get["annotations"]["readOnlyHint"], true);

    // Path and query parameters, structured content.
    let r = c.call_tool("getPet", json!({"pet_id": 2})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Tom", "{r}");
    let r = c
        .call_tool("listPets", json!({"limit": 1, "tag": "dog"}))
        .await;
    assert_eq!(
        r["result"]["structuredContent"]["result"],
        json!([{"id": 1, "name": "Rex", "tag": "dog"}]),
        "{r}"
    );
    // A JSON body, then the created resource read back.
    let r = c
        .call_tool("createPet", json!({"body": {"name": "Fido", "tag": "dog"}}))
        .await;
    let id = r["result"]["structuredContent"]["id"].clone();
    assert!(id.is_u64(), "{r}");
    let r = c.call_tool("getPet", json!({"pet_id": id})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Fido", "{r}");
    let r = c.call_tool("deletePet", json!({"pet_id": id})).await;
    assert!(!is_error(&r) && tool_text(&r).contains("204"), "{r}");

    // Error statuses are tool errors with the status and what the API said.
    let r = c.call_tool("getPet", json!({"pet_id": 99})).await;
    assert!(is_error(&r), "{r}");
    let t = tool_text(&r);
    assert!(
        t.contains("HTTP 404") && t.contains("pet 99 not found"),
        "{t}"
    );
    let r = c.call_tool("alwaysFails", json!({})).await;
    assert!(is_error(&r) && tool_text(&r).contains("HTTP 500"), "{r}");
    assert!(tool_text(&r).contains("the database exploded"), "{r}");
    let r = c
        .call_tool("getPet", json!({"pet_id": 1, "extra": true}))
        .await;
    assert!(
        is_error(&r) && tool_text(&r).contains("unknown argument `extra`"),
        "{r}"
    );
    // Text stays text.
    let r = c.call_tool("plainText", json!({})).await;
    assert_eq!(tool_text(&r), "plain words", "{r}");

    // A redirect within the base URL's origin is followed; one elsewhere is refused.
    let r = c.call_tool("redirectHome", json!({})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Rex", "{r}");
    let r = c.call_tool("redirectAway", json!({})).await;
    assert!(is_error(&r), "{r}");
    let t = tool_text(&r);
    assert!(
        t.contains("evil.invalid") && t.contains("outside base_url's origin"),
        "{t}"
    );

    // The response cap (64 KiB here) turns a larger answer into a tool error.
    let r = c.call_tool("bigAnswer", json!({"kib": 128})).await;
    assert!(is_error(&r), "{r}");
    assert!(tool_text(&r).contains("larger than 65536 bytes"), "{r}");
    let r = c.call_tool("bigAnswer", json!({"kib": 16})).await;
    assert!(!is_error(&r), "{r}");

    // The credential reached the API on every request...
    let reqs = api.requests();
    let calls: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["path"] != "/openapi.json")
        .collect();
    assert!(calls.len() >= 10, "{reqs:?}");
    for r in &calls {
        assert_eq!(
            r["headers"]["authorization"],
            format!("Bearer {SECRET}"),
            "{r}"
        );
        assert_eq!(r["headers"]["x-api-client"], "portcullis-test", "{r}");
    }
    // ...but an API that echoes it back shows it redacted, and it is in no log or audit record.
    let r = c.call_tool("whoAmI", json!({})).await;
    let shown = r.to_string();
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("[REDACTED:API_TOKEN]"), "{shown}");
    let log = gw.stderr();
    assert!(!log.contains(SECRET), "secret in the gateway's log");
    let audit = all_text(&gw.dir().join("audit"));
    assert!(audit.contains("getPet"), "the audit log recorded no call");
    assert!(!audit.contains(SECRET), "secret in the audit log");
    let (ok, out) = common::audit_verify(&gw.dir().join("audit"));
    assert!(ok, "{out}");
}

#[tokio::test]
async fn operations_allow_and_deny_choose_the_tools() {
    let Some(api) = RestApi::start("http://evil.invalid/") else {
        return;
    };
    let spec = api.spec_file();
    let extra = r#"operations = { allow = ["listPets", "GET /pets/{pet_id}", "delete /pets/*"], deny = ["deletePet"] }"#;
    let gw = Gateway::start_with(&policy(&spec, &api, extra), &[("PETS_API_TOKEN", SECRET)]);
    let mut c = client(&gw).await;
    let mut listed = names(&c.request("tools/list", json!({})).await);
    listed.sort();
    assert_eq!(listed, ["getPet", "listPets"]);
    let r = c.call_tool("deletePet", json!({"pet_id": 1})).await;
    assert!(r.get("error").is_some() || is_error(&r), "{r}");
    // Nothing reached the API for the denied operation.
    assert!(api.requests().iter().all(|r| r["method"] != "DELETE"));
    // A stateless 2026-07-28 client gets the same tools and calls the same way (the gateway
    // speaks to an openapi server as to a 2025-era one and bridges the eras).
    let m = common::modern::client(&gw, None);
    let list = common::modern::request(&m, 1, "tools/list", json!({}), json!({}))
        .await
        .message();
    let mut listed = names(&list);
    listed.sort();
    assert_eq!(listed, ["getPet", "listPets"], "{list}");
    let call = json!({"name": "getPet", "arguments": {"pet_id": 1}});
    let r = common::modern::request(&m, 2, "tools/call", call, json!({}))
        .await
        .message();
    assert_eq!(r["result"]["structuredContent"]["name"], "Rex", "{r}");
    let denied = json!({"name": "deletePet", "arguments": {"pet_id": 1}});
    let r = common::modern::request(&m, 3, "tools/call", denied, json!({})).await;
    assert!(r.status >= 400 || r.body.contains("error"), "{}", r.body);
    assert!(api.requests().iter().all(|r| r["method"] != "DELETE"));
}

#[tokio::test]
async fn every_parameter_style_round_trips_with_30_yaml_and_31_json() {
    let Some(api) = RestApi::start("http://evil.invalid/") else {
        return;
    };
    for doc in ["styles-3.0.yaml", "styles-3.1.json"] {
        let spec = common::repo_root().join("tests/openapi").join(doc);
        let gw = Gateway::start_with(&policy(&spec, &api, ""), &[("PETS_API_TOKEN", SECRET)]);
        round_trip(&gw).await;
    }
}

async fn round_trip(gw: &Gateway) {
    let mut c = client(gw).await;
    let echo = |r: &Value| -> Value {
        assert!(!is_error(r), "{r}");
        r["result"]["structuredContent"].clone()
    };
    let r = c
        .call_tool(
            "pathSimple",
            json!({"id": "a/b c", "list": [1, 2], "obj": {"k": "v"}}),
        )
        .await;
    assert_eq!(echo(&r)["raw_path"], "/echo/simple/a%2Fb%20c/1,2/k=v");
    let r = c
        .call_tool(
            "pathLabelMatrix",
            json!({"lab": ["x", "y"], "mat": ["p", "q"]}),
        )
        .await;
    assert_eq!(echo(&r)["raw_path"], "/echo/label/.x,y/matrix/;mat=p;mat=q");
    let r = c
        .call_tool(
            "queryStyles",
            json!({"exploded": ["a", "b"], "joined": ["a", "b"], "spaced": ["a", "b"],
                   "piped": ["a", "b"], "filter": {"color": "red"}, "note": "x&y", "doc": {"k": 1}}),
        )
        .await;
    assert_eq!(
        echo(&r)["query"],
        "exploded=a&exploded=b&joined=a,b&spaced=a%20b&piped=a%7Cb&filter%5Bcolor%5D=red&note=x%26y&doc=%7B%22k%22%3A1%7D"
    );
    let r = c
        .call_tool(
            "headerAndCookie",
            json!({"X-Trace": "t-1", "X-Tags": ["a", "b"], "session": "s1", "query_id": "q"}),
        )
        .await;
    let e = echo(&r);
    assert_eq!(e["headers"]["x-trace"], "t-1");
    assert_eq!(e["headers"]["x-tags"], "a,b");
    assert_eq!(e["headers"]["cookie"], "session=s1");
    assert_eq!(e["query"], "id=q");
    let r = c
        .call_tool(
            "createThing",
            json!({"body": {"name": "n", "parent": {"name": "p"}}}),
        )
        .await;
    let e = echo(&r);
    assert_eq!(e["content_type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(e["body"].as_str().unwrap()).unwrap(),
        json!({"name": "n", "parent": {"name": "p"}})
    );
    let r = c
        .call_tool(
            "replaceThingForm",
            json!({"body": {"name": "a b", "count": 2}}),
        )
        .await;
    let e = echo(&r);
    assert_eq!(e["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(e["body"], "name=a%20b&count=2");
    let r = c.call_tool("noteThing", json!({"body": "hello"})).await;
    assert!(tool_text(&r).contains("\"body\":\"hello\""), "{r}");
    // A header argument cannot smuggle a second header.
    let r = c
        .call_tool("headerAndCookie", json!({"X-Trace": "a\r\nX-Evil: 1"}))
        .await;
    assert!(
        is_error(&r) && tool_text(&r).contains("control character"),
        "{r}"
    );
}

#[tokio::test]
async fn private_addresses_need_an_egress_rule_and_slow_apis_time_out() {
    let Some(api) = RestApi::start("http://evil.invalid/") else {
        return;
    };
    let spec = api.spec_file();
    // `localhost` passes validation (a name), but resolves to loopback, which no rule allows.
    // (Plain http to a name may carry no secret: the header goes.)
    let text = policy(&spec, &api, "")
        .replace("headers = {", "# headers = {")
        .replace(&api.url(), &format!("http://localhost:{}", api.port))
        .replace(&format!("127.0.0.1/32:{}", api.port), "127.0.0.2/32:1");
    let gw = Gateway::start_with(&text, &[("PETS_API_TOKEN", SECRET)]);
    let mut c = client(&gw).await;
    let r = c.call_tool("getPet", json!({"pet_id": 1})).await;
    assert!(is_error(&r), "{r}");
    assert!(tool_text(&r).contains("private, loopback"), "{r}");
    assert!(api.requests().iter().all(|r| r["path"] != "/pets/1"));
    drop(gw);

    let gw = Gateway::start_with(
        &policy(&spec, &api, "request_timeout = \"2s\""),
        &[("PETS_API_TOKEN", SECRET)],
    );
    let mut c = client(&gw).await;
    let started = Instant::now();
    let r = c.call_tool("slowAnswer", json!({"seconds": 30})).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(r.get("error").is_some() || is_error(&r), "{r}");
    // The server is still there for the next call.
    let r = c.call_tool("getPet", json!({"pet_id": 1})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Rex", "{r}");
}

/// Runs `portcullis policy ARGS` on a policy whose openapi server reads `spec` (YAML text).
fn policy_cli(cmd: &str, spec: &str, server_extra: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    if !spec.is_empty() {
        std::fs::write(dir.path().join("api.yaml"), spec).unwrap();
    }
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[servers.api]\nruntime = \"openapi\"\nspec = \"api.yaml\"\nbase_url = \"https://api.example.com/v1\"\n{server_extra}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["policy", cmd])
        .arg(&policy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "openapi: 3.0.3\ninfo: {title: Demo, version: '2'}\npaths:\n  /items/{id}:\n    parameters: [{name: id, in: path, required: true, schema: {type: string}}]\n    get:\n      operationId: getItem\n      responses: {'200': {description: ok}}\n    delete:\n      responses: {'204': {description: gone}}\n";

#[test]
fn policy_check_and_show_read_the_document() {
    let (code, out, err) = policy_cli("check", GOOD, "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 server: api)"), "{out}");
    let (code, out, err) = policy_cli("show", GOOD, "tools = { deny = [\"delete_*\"] }");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runtime               openapi"), "{out}");
    assert!(
        out.contains("api                   Demo 2 (2 tools)"),
        "{out}"
    );
    assert!(
        out.contains("tool                  getItem = GET /items/{id}"),
        "{out}"
    );
    assert!(
        out.contains(
            "tool                  delete_items_id = DELETE /items/{id} (hidden by tools)"
        ),
        "{out}"
    );
    // The gateway makes an openapi server's MCP side itself: no protocol era to show or pin.
    assert!(!out.contains("protocol"), "{out}");
    let (code, _, err) = policy_cli("check", GOOD, "protocol = \"2026-07-28\"");
    assert_ne!(code, 0, "protocol on an openapi server must be refused");
    assert!(
        err.contains("`protocol` does not apply to a runtime = \"openapi\" server"),
        "{err}"
    );
}

#[test]
fn policy_check_names_where_a_document_is_wrong() {
    // An unknown $ref: the policy line of `spec`, the document, and the JSON pointer.
    let bad = GOOD.replace("{type: string}", "{$ref: '#/components/schemas/Id'}");
    let (code, _, err) = policy_cli("check", &bad, "");
    assert_eq!(code, 1);
    assert!(err.contains("policy.toml:3:8"), "{err}");
    assert!(
        err.contains("api.yaml` at /paths/~1items~1{id}/parameters/0/schema/$ref: unknown `$ref` \"#/components/schemas/Id\""),
        "{err}"
    );
    // YAML that does not parse: its own line.
    let (code, _, err) = policy_cli("check", "openapi: 3.1.0\ninfo: [oops\n", "");
    assert_eq!(code, 1);
    assert!(
        err.contains("not valid YAML") && err.contains("line 3"),
        "{err}"
    );
    // Structure: a parameter in a place OpenAPI does not have.
    let (code, _, err) = policy_cli("check", &GOOD.replace("in: path", "in: body"), "");
    assert_eq!(code, 1);
    assert!(
        err.contains("/paths/~1items~1{id}/parameters/0: not a valid OpenAPI object here"),
        "{err}"
    );
    // An operations entry that names nothing (a typo in deny would expose the operation).
    let (code, _, err) = policy_cli("check", GOOD, "operations = { deny = [\"getItems\"] }");
    assert_eq!(code, 1);
    assert!(
        err.contains("policy.toml:5:24")
            && err.contains("operations.deny entry \"getItems\"")
            && err.contains("getItem (GET /items/{id})"),
        "{err}"
    );
    // A missing document.
    let (code, _, err) = policy_cli("check", "", "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read OpenAPI document"), "{err}");
}

#[tokio::test]
async fn oauth_tokens_are_fetched_sent_and_never_shown() {
    let Some(api) = RestApi::start("http://evil.invalid/") else {
        return;
    };
    let auth = oauth_support::AuthServer::start("gw-client", "cs-openapi-41d2", None);
    let spec = api.spec_file();
    let text = policy(&spec, &api, "")
        .replace("headers = {", "# headers = {")
        .replace(
            "secrets = { API_TOKEN = \"env:PETS_API_TOKEN\" }",
            &format!(
                "secrets = {{ CS = \"env:PETS_CLIENT_SECRET\" }}\noauth = {{ token_url = \"{}\", client_id = \"gw-client\", client_secret = \"${{secret:CS}}\" }}",
                auth.token_url()
            ),
        )
        .replace(
            &format!("\"127.0.0.1/32:{}\"", api.port),
            &format!("\"127.0.0.1/32:{}\", \"127.0.0.1/32:{}\"", api.port, auth.port()),
        )
        .replace("[audit]", "[audit]\n# state below the policy\n")
        .replace("[gateway]", "[gateway]\nstate_dir = \"{tmp}/state\"");
    let gw = Gateway::start_with(&text, &[("PETS_CLIENT_SECRET", "cs-openapi-41d2")]);
    let mut c = client(&gw).await;
    let r = c.call_tool("getPet", json!({"pet_id": 1})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Rex", "{r}");
    let issued = auth.issued();
    assert!(!issued.is_empty(), "no token was issued");
    let sent = api
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/pets/1")
        .expect("the API saw the call");
    let bearer = sent["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        issued.iter().any(|t| bearer == format!("Bearer {t}")),
        "{bearer}"
    );
    // The API echoes the token: the client sees it redacted; no log or audit record has it.
    let r = c.call_tool("whoAmI", json!({})).await;
    let shown = r.to_string();
    let log = gw.stderr();
    let audit = all_text(&gw.dir().join("audit"));
    assert!(shown.contains("Bearer [REDACTED:"), "{shown}");
    for t in &issued {
        assert!(
            !shown.contains(t.as_str()),
            "token shown to the client: {shown}"
        );
        assert!(!log.contains(t.as_str()), "token in the gateway's log");
        assert!(!audit.contains(t.as_str()), "token in the audit log");
    }
    assert!(!log.contains("cs-openapi-41d2") && !audit.contains("cs-openapi-41d2"));
}

#[tokio::test]
async fn a_changed_document_takes_effect_on_sighup() {
    let Some(api) = RestApi::start("http://evil.invalid/") else {
        return;
    };
    let spec = api.spec_file();
    let gw = Gateway::start_with(&policy(&spec, &api, ""), &[("PETS_API_TOKEN", SECRET)]);
    let mut c = client(&gw).await;
    assert!(names(&c.request("tools/list", json!({})).await).contains(&"getPet".to_owned()));
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("\"getPet\"", "\"fetchPet\"")).unwrap();
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = names(&c.request("tools/list", json!({})).await);
        if listed.contains(&"fetchPet".to_owned()) {
            assert!(!listed.contains(&"getPet".to_owned()), "{listed:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new document never took effect: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.call_tool("fetchPet", json!({"pet_id": 2})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Tom", "{r}");
    // A broken document is refused on reload: the running tools stay.
    std::fs::write(&spec, "openapi: 3.1.0\ninfo: [broken\n").unwrap();
    gw.sighup();
    gw.wait_for_log("not valid YAML", 1, Duration::from_secs(20));
    let r = c.call_tool("fetchPet", json!({"pet_id": 1})).await;
    assert_eq!(r["result"]["structuredContent"]["name"], "Rex", "{r}");
}
