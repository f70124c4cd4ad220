use serde_json::{json, Map, Value};

use super::response::{result, Answer};
use super::*;

const STYLES_30: &str = include_str!("../../tests/openapi/styles-3.0.yaml");
const STYLES_31: &str = include_str!("../../tests/openapi/styles-3.1.json");
const FASTAPI: &str = include_str!("../../tests/openapi/fastapi-petstore.json");

fn api(text: &str) -> Api {
    Document::parse(text, "test")
        .unwrap()
        .tools(|_| true)
        .unwrap()
}

fn err(text: &str) -> String {
    match Document::parse(text, "doc.yaml").and_then(|d| d.tools(|_| true)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn build(api: &Api, tool: &str, a: Value) -> request::Request {
    request::build(api.tool(tool).unwrap(), "/base/", &args(a)).unwrap()
}

#[test]
fn a_30_yaml_and_a_31_json_document_make_the_same_tools() {
    let a = api(STYLES_30);
    let b = api(STYLES_31);
    let names = |x: &Api| x.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert_eq!(
        names(&a),
        [
            "pathSimple",
            "pathLabelMatrix",
            "queryStyles",
            "headerAndCookie",
            "replaceThingForm",
            "createThing",
            "deleteThing",
            "noteThing",
        ]
    );
    for name in [
        "pathSimple",
        "queryStyles",
        "headerAndCookie",
        "replaceThingForm",
    ] {
        assert_eq!(
            a.tool(name).unwrap().definition,
            b.tool(name).unwrap().definition,
            "{name}"
        );
    }
}

#[test]
fn the_30_lift_turns_nullable_and_boolean_bounds_into_31_keywords() {
    let a = api(STYLES_30);
    let q = &a.tool("queryStyles").unwrap().definition["inputSchema"]["properties"];
    assert_eq!(q["note"]["type"], json!(["string", "null"]));
    assert_eq!(
        q["filter"]["properties"]["size"]["exclusiveMinimum"],
        json!(0)
    );
    assert!(q["filter"]["properties"]["size"].get("minimum").is_none());
}

#[test]
fn input_schemas_come_from_parameters_and_bodies_with_refs_inlined() {
    let a = api(STYLES_30);
    let t = &a.tool("pathSimple").unwrap().definition;
    assert_eq!(t["title"], "Path parameters in simple style");
    let s = &t["inputSchema"];
    assert_eq!(s["required"], json!(["id", "list", "obj"]));
    assert_eq!(s["properties"]["id"]["description"], "The thing's id");
    assert_eq!(s["additionalProperties"], false);
    // The recursive `parent` is cut after one expansion.
    let body = &a.tool("createThing").unwrap().definition["inputSchema"];
    assert_eq!(body["required"], json!(["body"]));
    let thing = &body["properties"]["body"];
    assert_eq!(thing["description"], "The thing to create");
    assert_eq!(thing["properties"]["name"]["type"], "string");
    let parent = thing["properties"]["parent"]["description"]
        .as_str()
        .unwrap();
    assert!(
        parent.contains("recursive reference to #/components/schemas/Thing"),
        "{parent}"
    );
    // Same name in two locations: both get their location as a prefix.
    let h = &a.tool("headerAndCookie").unwrap().definition["inputSchema"]["properties"];
    assert!(
        h.get("query_id").is_some() && h.get("header_id").is_some(),
        "{h}"
    );
}

#[test]
fn hints_follow_the_http_method() {
    let a = api(STYLES_30);
    let hint = |n: &str| a.tool(n).unwrap().definition["annotations"].clone();
    assert_eq!(hint("pathSimple")["readOnlyHint"], true);
    assert_eq!(hint("deleteThing")["destructiveHint"], true);
    assert_eq!(hint("deleteThing")["readOnlyHint"], false);
    assert_eq!(hint("createThing")["readOnlyHint"], false);
    assert!(hint("createThing").get("destructiveHint").is_none());
}

#[test]
fn path_parameters_are_templated_and_escaped() {
    let a = api(STYLES_30);
    let r = build(
        &a,
        "pathSimple",
        json!({"id": "a/b?c", "list": [1, 2], "obj": {"k": "v w"}}),
    );
    assert_eq!(r.path_and_query, "/base/echo/simple/a%2Fb%3Fc/1,2/k=v%20w");
    let r = build(&a, "pathSimple", json!({"id": "..", "list": [], "obj": {}}));
    assert!(
        r.path_and_query.starts_with("/base/echo/simple/%2E%2E/"),
        "{r:?}"
    );
    let r = build(
        &a,
        "pathLabelMatrix",
        json!({"lab": ["x", "y"], "mat": ["p", "q"]}),
    );
    assert_eq!(
        r.path_and_query,
        "/base/echo/label/.x,y/matrix/;mat=p;mat=q"
    );
}

#[test]
fn literal_path_characters_a_url_cannot_carry_are_encoded() {
    let doc = format!(
        "{HEAD}paths:\n  '/a b/<x>/{{id}}/caf\u{e9}:1@x':\n    get:\n      operationId: odd\n      parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]\n      responses: {{}}\n"
    );
    let a = api(&doc);
    let r = build(&a, "odd", json!({"id": "v"}));
    assert_eq!(r.path_and_query, "/base/a%20b/%3Cx%3E/v/caf%C3%A9:1@x");
    assert!(format!("http://h{}", r.path_and_query)
        .parse::<http::Uri>()
        .is_ok());
}

#[test]
fn query_styles_serialize_as_openapi_says() {
    let a = api(STYLES_30);
    let r = build(
        &a,
        "queryStyles",
        json!({
            "exploded": ["a", "b"], "joined": ["a", "b"], "spaced": ["a", "b"],
            "piped": ["a", "b"], "filter": {"color": "red", "size": 3},
            "note": "x&y=z", "doc": {"k": 1}
        }),
    );
    assert_eq!(
        r.path_and_query,
        "/base/echo/query?exploded=a&exploded=b&joined=a,b&spaced=a%20b&piped=a%7Cb\
         &filter%5Bcolor%5D=red&filter%5Bsize%5D=3&note=x%26y%3Dz&doc=%7B%22k%22%3A1%7D"
    );
    // Absent and null optional parameters are left out.
    let r = build(&a, "queryStyles", json!({"note": null}));
    assert_eq!(r.path_and_query, "/base/echo/query");
}

#[test]
fn headers_cookies_and_bodies() {
    let a = api(STYLES_30);
    let r = build(
        &a,
        "headerAndCookie",
        json!({"X-Trace": "t1", "X-Tags": ["a", "b"], "session": "s 1", "header_id": "h", "query_id": "q"}),
    );
    assert_eq!(r.path_and_query, "/base/echo/headers?id=q");
    assert_eq!(
        r.headers,
        [
            ("X-Trace".to_owned(), "t1".to_owned()),
            ("X-Tags".to_owned(), "a,b".to_owned()),
            ("id".to_owned(), "h".to_owned()),
            ("cookie".to_owned(), "session=s%201".to_owned()),
        ]
    );
    let bad = request::build(
        a.tool("headerAndCookie").unwrap(),
        "",
        &args(json!({"X-Trace": "a\r\nX-Evil: 1"})),
    );
    assert!(bad.unwrap_err().contains("control character"));
    let r = build(&a, "createThing", json!({"body": {"name": "n"}}));
    assert_eq!(
        r.body,
        Some(("application/json".to_owned(), br#"{"name":"n"}"#.to_vec()))
    );
    let r = build(
        &a,
        "replaceThingForm",
        json!({"body": {"name": "a b", "count": 2}}),
    );
    assert_eq!(
        r.body,
        Some((
            "application/x-www-form-urlencoded".to_owned(),
            b"name=a%20b&count=2".to_vec()
        ))
    );
    let r = build(&a, "noteThing", json!({"body": "hello"}));
    assert_eq!(r.body, Some(("text/plain".to_owned(), b"hello".to_vec())));
}

#[test]
fn bad_arguments_say_which_and_why() {
    let a = api(STYLES_30);
    let t = a.tool("pathSimple").unwrap();
    let e = request::build(t, "", &args(json!({"list": [1], "obj": {}}))).unwrap_err();
    assert!(e.contains("missing required argument `id`"), "{e}");
    let e = request::build(t, "", &args(json!({"nope": 1}))).unwrap_err();
    assert!(
        e.contains("unknown argument `nope`") && e.contains("id, list, obj"),
        "{e}"
    );
    let e = request::build(a.tool("createThing").unwrap(), "", &Map::new()).unwrap_err();
    assert!(e.contains("request body"), "{e}");
}

#[test]
fn fastapi_document_makes_typed_tools() {
    let a = api(FASTAPI);
    assert_eq!(a.title, "Pet Store");
    let list = a.tool("listPets").unwrap();
    assert_eq!(list.output, Output::Wrapped);
    assert_eq!(
        list.definition["outputSchema"]["properties"]["result"]["items"]["properties"]["id"]
            ["type"],
        "integer"
    );
    assert_eq!(a.tool("getPet").unwrap().output, Output::Object);
    // 204 without content: no output schema.
    assert!(a
        .tool("deletePet")
        .unwrap()
        .definition
        .get("outputSchema")
        .is_none());
    // The `authorization` header parameter is ignored, as the specification says.
    let who = &a.tool("whoAmI").unwrap().definition["inputSchema"]["properties"];
    assert!(who.as_object().unwrap().is_empty(), "{who}");
}

#[test]
fn names_are_sanitized_and_bounded() {
    let mk = |id: Option<&str>, path: &str| OperationRef {
        method: http::Method::GET,
        path: path.to_owned(),
        operation_id: id.map(str::to_owned),
        pointer: String::new(),
    };
    assert_eq!(
        tools::name_of(&mk(None, "/pets/{petId}/toys")),
        "get_pets_petId_toys"
    );
    assert_eq!(tools::name_of(&mk(Some("pets.list"), "/")), "pets_list");
    let long = "x".repeat(100);
    let n = tools::name_of(&mk(Some(&long), "/"));
    assert_eq!(n.len(), 64);
    assert_ne!(n, tools::name_of(&mk(Some(&format!("{long}y")), "/")));
    let n = tools::name_of(&mk(Some("ünïcode"), "/"));
    assert!(n.is_ascii() && n.len() <= 64, "{n}");
}

const HEAD: &str = "openapi: 3.0.0\ninfo: {title: t, version: '1'}\n";

#[test]
fn bad_documents_are_refused_with_where() {
    let e = err(&format!(
        "{HEAD}paths:\n  /a:\n    get:\n      responses:\n        '200':\n          description: x\n          content:\n            application/json:\n              schema: {{$ref: '#/components/schemas/Nope'}}\n"
    ));
    assert!(
        e.contains("/paths/~1a/get/responses/200/content/application~1json/schema/$ref")
            && e.contains("unknown `$ref` \"#/components/schemas/Nope\""),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}paths:\n  /a:\n    get:\n      parameters:\n        - {{name: q, in: query, schema: {{$ref: 'other.yaml#/X'}}}}\n      responses: {{}}\n"
    ));
    assert!(
        e.contains("external `$ref`") && e.contains("/paths/~1a/get/parameters/0/schema/$ref"),
        "{e}"
    );
    let e = err("swagger: '2.0'\ninfo: {title: t, version: '1'}\n");
    assert!(e.contains("Swagger 2.0"), "{e}");
    let e = err("openapi: 3.0.0\ninfo: [unclosed\n");
    assert!(e.contains("not valid YAML") && e.contains("line"), "{e}");
    let e = err(&format!(
        "{HEAD}paths:\n  /a:\n    get:\n      parameters:\n        - {{name: q, in: body}}\n      responses: {{}}\n"
    ));
    assert!(e.contains("/paths/~1a/get/parameters/0"), "{e}");
    let e = err(&format!(
        "{HEAD}paths:\n  /a:\n    post:\n      requestBody:\n        content:\n          multipart/form-data: {{}}\n      responses: {{}}\n    get:\n      parameters:\n        - {{name: p, in: path, required: true, style: form, schema: {{type: string}}}}\n      responses: {{}}\n"
    ));
    let e2 = err(&format!(
        "{HEAD}paths:\n  /a/{{id}}:\n    get:\n      responses: {{}}\n"
    ));
    assert!(
        e2.contains("at /paths/~1a~1{id}/get: the path has a placeholder `{id}`"),
        "{e2}"
    );
    assert!(
        e.contains("at /paths/~1a/post/requestBody/content: request body types `multipart/form-data` are not supported")
            && e.contains("at /paths/~1a/get/parameters/0/style"),
        "{e}"
    );
}

#[test]
fn unsupported_operations_can_be_left_out() {
    let doc = Document::parse(
        &format!("{HEAD}paths:\n  /a:\n    post:\n      operationId: upload\n      requestBody:\n        content:\n          multipart/form-data: {{}}\n      responses: {{}}\n    get:\n      operationId: fine\n      responses: {{}}\n"),
        "x",
    )
    .unwrap();
    let api = doc
        .tools(|o| o.operation_id.as_deref() != Some("upload"))
        .unwrap();
    assert_eq!(api.tools.len(), 1);
}

#[test]
fn results_carry_structured_content_and_errors_carry_the_status() {
    let a = api(FASTAPI);
    let ok = |tool: &str, status: u16, ct: &str, body: &str| {
        result(
            a.tool(tool).unwrap(),
            &Answer {
                status,
                reason: "OK",
                content_type: Some(ct),
                body,
                binary: None,
            },
        )
    };
    let r = ok(
        "getPet",
        200,
        "application/json",
        r#"{"id":1,"name":"Rex"}"#,
    );
    assert_eq!(r["structuredContent"]["name"], "Rex");
    assert_eq!(r["isError"], false);
    let r = ok("listPets", 200, "application/json", "[]");
    assert_eq!(r["structuredContent"], json!({"result": []}));
    let r = ok("plainText", 200, "text/plain; charset=utf-8", "plain words");
    assert_eq!(r["content"][0]["text"], "plain words");
    assert!(r.get("structuredContent").is_none());
    let r = ok(
        "getPet",
        404,
        "application/json",
        r#"{"detail":"pet 9 not found"}"#,
    );
    assert_eq!(r["isError"], true);
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("HTTP 404") && text.contains("pet 9 not found"),
        "{text}"
    );
    // A typed tool that gets no JSON is an error, not a result that breaks the client.
    let r = ok("getPet", 200, "text/html", "<html>");
    assert_eq!(r["isError"], true);
}

#[test]
fn only_regular_files_of_bounded_size_are_read() {
    let e = Document::read(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b' '; (16 << 20) + 1]).unwrap();
    let e = Document::read(&big).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut doc = String::from(
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        doc.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = Document::parse(&doc, "bomb.yaml").unwrap_err();
    assert!(e.to_string().contains("not valid YAML"), "{e}");
}
