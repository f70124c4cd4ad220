//! (e) catalog requests answered from the gateway's cache: `tools/list` and `resources/list` over
//! 50 servers with 20 tools and 20 resources each (one page of 1,000 entries), for a client
//! without rules (e, er) and for one whose rules the gateway checks on every entry (ec, erc);
//! (em) is (e) asked by stateless 2026-07-28 clients; (em0) is the ceiling of (em): the same
//! answer, byte for byte, sent by a server that does nothing else (`portcullis-bench-echo
//! --static`), so that the notes can say how far any gateway could go on this machine.
//!
//! With `BENCH_BASELINE_BIN=PATH` (another build of `portcullis`, e.g. the one before a change)
//! every row also runs against that binary, on the same machine in the same run, alternating
//! baseline and this build twice; rows `ID-base` are the baseline, and each pair's ratio (best
//! throughput of its two runs, this build over the baseline) goes into the notes.

use std::path::PathBuf;

use crate::common::{self, token_hash};
use crate::drive::{Plan, Work};
use crate::report::Row;
use crate::{measure, Watch};

const SERVERS: usize = 50;
const ITEMS: usize = 20;
const OPEN: &str = "pcs_bench-open-client-token-000000000000000000";
const RULED: &str = "pcs_bench-ruled-client-token-11111111111111111";

/// 50 echo servers; client `open` has no rules, client `ruled` sees about half of the entries
/// through a handful of patterns (both allow and deny are consulted for every entry).
fn policy() -> String {
    let mut p = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nnaming = \"prefix\"\npage_size = 10000\n\n[audit]\nenabled = false\n\n[clients.open]\ntoken_sha256 = \"{}\"\n\n[clients.ruled]\ntoken_sha256 = \"{}\"\nallow = [\"s0*__*\", \"s1*__*\", \"*__tool_1*\", \"*__bench://r/1*\", \"s4*__echo\"]\ndeny = [\"s00__*\", \"*__tool_19\"]\n",
        token_hash(OPEN),
        token_hash(RULED)
    );
    for i in 0..SERVERS {
        p.push_str(&format!(
            "\n[servers.s{i:02}]\nruntime = \"process\"\ncommand = \"{}\"\nargs = [\"--stdio\", \"--tools\", \"{ITEMS}\", \"--resources\", \"{ITEMS}\"]\n",
            crate::procs::echo_bin().display()
        ));
    }
    p
}

struct Case {
    id: &'static str,
    label: &'static str,
    method: &'static str,
    token: &'static str,
    /// Asked as stateless 2026-07-28 requests.
    modern: bool,
}

const CASES: [Case; 5] = [
    Case {
        id: "e",
        label: "Portcullis tools/list, 50 servers x 20 tools",
        method: "tools/list",
        token: OPEN,
        modern: false,
    },
    Case {
        id: "em",
        label: "Portcullis tools/list, 50 servers x 20 tools, 2026-07-28 stateless",
        method: "tools/list",
        token: OPEN,
        modern: true,
    },
    Case {
        id: "er",
        label: "Portcullis resources/list, 50 servers x 20 resources",
        method: "resources/list",
        token: OPEN,
        modern: false,
    },
    Case {
        id: "ec",
        label: "Portcullis tools/list, 50 x 20, client rules checked per entry",
        method: "tools/list",
        token: RULED,
        modern: false,
    },
    Case {
        id: "erc",
        label: "Portcullis resources/list, 50 x 20, client rules checked per entry",
        method: "resources/list",
        token: RULED,
        modern: false,
    },
];

pub async fn run(plan: Plan, notes: &mut Vec<String>) -> Result<Vec<Row>, String> {
    let env = [("RUST_LOG", "info")];
    let ours = common::Gateway::start_with(&policy(), &env);
    let base = std::env::var_os("BENCH_BASELINE_BIN")
        .map(|bin| common::Gateway::start_bin(&PathBuf::from(bin), &policy(), &env));
    let mut rows = Vec::new();
    for case in CASES.iter().filter(|c| crate::wanted(c.id)) {
        let target = |gw: &common::Gateway| crate::drive::Target {
            url: gw.url.clone(),
            work: if case.modern {
                Work::ModernList
            } else {
                Work::List(case.method)
            },
            bearer: Some(case.token.to_owned()),
        };
        let watch = |gw: &common::Gateway| Watch {
            gateway: Some(gw.child.id()),
            upstream: None,
        };
        let Some(base) = &base else {
            rows.push(measure(case.id, case.label, &target(&ours), plan, watch(&ours)).await?);
            continue;
        };
        let base_id = format!("{}-base", case.id);
        let base_label = format!("{} (baseline build)", case.label);
        let mut runs: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            runs[0].push(measure(&base_id, &base_label, &target(base), plan, watch(base)).await?);
            runs[1].push(measure(case.id, case.label, &target(&ours), plan, watch(&ours)).await?);
        }
        let [b, o] = runs.map(|r| {
            r.into_iter()
                .max_by(|x, y| x.stats.rate().total_cmp(&y.stats.rate()))
                .expect("two runs")
        });
        let note = format!(
            "{}: this build {:.0}/s p50 {:.0} us, baseline {:.0}/s p50 {:.0} us: throughput ratio {:.3}, p50 ratio {:.3} (best of two alternating runs each)",
            case.id,
            o.stats.rate(),
            o.stats.pct_us(0.5),
            b.stats.rate(),
            b.stats.pct_us(0.5),
            o.stats.rate() / b.stats.rate().max(1e-9),
            o.stats.pct_us(0.5) / b.stats.pct_us(0.5).max(1e-9),
        );
        eprintln!("[bench] {note}");
        notes.push(note);
        rows.push(b);
        rows.push(o);
    }
    if crate::wanted("em0") || crate::wanted("em") {
        match ceiling(&ours, plan).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                let note = format!("(em0) ceiling not measured: {e}");
                eprintln!("[bench] {note}");
                notes.push(note);
            }
        }
    }
    Ok(rows)
}

/// (em0): the gateway's (em) answer, fetched once, served by a static server.
async fn ceiling(gw: &common::Gateway, plan: Plan) -> Result<Row, String> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{}}}}}"#,
        crate::drive::ENVELOPE
    );
    let answer = reqwest::Client::new()
        .post(&gw.url)
        .bearer_auth(OPEN)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", crate::drive::MODERN)
        .header("mcp-method", "tools/list")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("fetching the (em) answer: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("reading the (em) answer: {e}"))?;
    let dir = tempfile::tempdir_in(common::repo_root().join("bench")).map_err(|e| e.to_string())?;
    let file = dir.path().join("em-answer.json");
    std::fs::write(&file, &answer).map_err(|e| e.to_string())?;
    eprintln!("[bench] (em0) the answer is {} bytes", answer.len());
    let port = crate::procs::free_port();
    let mut cmd = std::process::Command::new(crate::procs::echo_bin());
    cmd.args(["--http", &format!("127.0.0.1:{port}"), "--static"])
        .arg(&file);
    let mut proc = crate::procs::Proc::spawn("static server", cmd, &dir.path().join("static.log"))?;
    crate::procs::wait_port(&mut proc, port, std::time::Duration::from_secs(10))?;
    let target = crate::drive::Target {
        url: format!("http://127.0.0.1:{port}/mcp"),
        work: Work::ModernList,
        bearer: None,
    };
    let watch = Watch {
        gateway: Some(proc.pid()),
        upstream: None,
    };
    let label = "ceiling: the (em) answer sent by a static server (no gateway)";
    measure("em0", label, &target, plan, watch).await
}
