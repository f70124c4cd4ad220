//! Every committed fuzz input, replayed through the harness the fuzzer runs
//! (`portcullis::fuzzing`): the seed corpora (`fuzz/corpus/TARGET/seed-*`) and the inputs of
//! fixed crashes (`fuzz/regressions/TARGET/*`). A crash the fuzzer found once fails the normal
//! test suite if it comes back, without a fuzzer or a nightly toolchain.

use std::path::{Path, PathBuf};

use portcullis::fuzzing::{Harness, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` whose names start with `prefix`, sorted; none when `dir` does not exist.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn harness(target: &str) -> Harness {
    match TARGETS.iter().find(|(name, _)| *name == target) {
        Some((_, h)) => *h,
        None => panic!("no harness named {target}"),
    }
}

/// Runs every seed and regression input of `target`; returns the seeds' contents.
fn replay(target: &str) -> Vec<Vec<u8>> {
    let run = harness(target);
    let seeds = files(&fuzz_dir().join("corpus").join(target), "seed-");
    assert!(
        !seeds.is_empty(),
        "no seeds in fuzz/corpus/{target}/ (fuzz/seeds/make.sh writes them)"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target), "");
    let mut contents = Vec::new();
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "{target} fails on {} (reproduce: cargo fuzz run {target} {})",
            path.display(),
            path.display()
        );
        if seeds.contains(path) {
            contents.push(data);
        }
    }
    contents
}

#[test]
fn every_target_has_a_harness_and_a_fuzz_target() {
    for (name, _) in TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}

#[test]
fn mcp_message_inputs() {
    let seeds = replay("mcp_message");
    // The seeds reach past the parser's error paths.
    let parsed = seeds
        .iter()
        .filter(|s| portcullis::mcp::Body::parse(s).is_ok())
        .count();
    assert!(
        parsed * 2 > seeds.len(),
        "only {parsed} of {} seeds parse",
        seeds.len()
    );
}

#[test]
fn http_request_inputs() {
    replay("http_request");
}

#[test]
fn modern_request_inputs() {
    let seeds = replay("modern_request");
    // The seeds reach the decoder's accepting path, not only its refusals.
    let stateless = seeds
        .iter()
        .filter(|s| {
            std::str::from_utf8(s).is_ok_and(|t| t.contains("MCP-Protocol-Version: 2026-07-28"))
        })
        .count();
    assert!(
        stateless * 2 > seeds.len(),
        "{stateless} of {} seeds are stateless requests",
        seeds.len()
    );
}

#[test]
fn sse_stream_inputs() {
    replay("sse_stream");
}

#[test]
fn policy_toml_inputs() {
    let seeds = replay("policy_toml");
    let valid = seeds
        .iter()
        .filter(|s| {
            std::str::from_utf8(s)
                .is_ok_and(|src| portcullis::policy::parse(src, "seed.toml").is_ok())
        })
        .count();
    assert!(valid > 0, "no seed is a valid policy");
}

#[test]
fn policy_import_inputs() {
    let seeds = replay("policy_import");
    let imported = seeds
        .iter()
        .filter(|s| {
            std::str::from_utf8(s).is_ok_and(|src| portcullis::policy::import(src, "s").is_ok())
        })
        .count();
    assert!(imported > 0, "no seed imports");
}

#[test]
fn tool_definition_inputs() {
    let seeds = replay("tool_definition");
    // The seeds cover definitions with every class of hidden character.
    let all = seeds.concat();
    let all = String::from_utf8_lossy(&all);
    for needle in ["\\u001b", "\\u200b", "\\u202e", "\\udb40"] {
        assert!(all.contains(needle), "no seed holds {needle}");
    }
}

#[test]
fn openapi_tools_inputs() {
    let seeds = replay("openapi_tools");
    let with_tools = seeds
        .iter()
        .filter(|s| {
            std::str::from_utf8(s).is_ok_and(|text| {
                portcullis::openapi::Document::parse(text, "seed")
                    .and_then(|d| d.tools(|_| true))
                    .is_ok_and(|api| !api.tools.is_empty())
            })
        })
        .count();
    assert_eq!(
        with_tools,
        seeds.len(),
        "every seed is a document that makes tools"
    );
}

#[test]
fn dns_query_inputs() {
    replay("dns_query");
}

#[test]
fn audit_verify_inputs() {
    let seeds = replay("audit_verify");
    // The seeds are real logs, signed with the fuzzing key: the fuzzer starts from a log that
    // passes every check, signatures included.
    let key = ed25519_dalek::SigningKey::from_bytes(&portcullis::fuzzing::SEED_LOG_KEY);
    for seed in &seeds {
        let segments: Vec<(u64, &[u8])> = seed
            .split(|b| *b == 0x1e)
            .zip(1u64..)
            .map(|(s, i)| (i, s))
            .collect();
        let report =
            portcullis::audit::verify::verify_segments(&segments, Some(&key.verifying_key()))
                .unwrap_or_else(|f| panic!("a seed log does not verify: {f}"));
        assert!(report.checkpoints > 0);
    }
}

/// Writes the DNS seeds: queries as a sandbox's resolver library sends them and answers as an
/// upstream resolver gives them, built with hickory-proto, for the names the harness allows
/// (src/fuzzing/dns.rs) and some it does not.
#[test]
#[ignore = "writes fuzz/corpus/dns_query/; run by fuzz/seeds/make.sh"]
fn write_dns_seeds() {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

    let name = |s: &str| Name::from_ascii(s).unwrap();
    let query = |id: u16, n: &str, t: RecordType, edns: bool| {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(name(n), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m
    };
    let answer = |q: &Message, code: ResponseCode, records: Vec<Record>| {
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .set_recursion_available(true)
            .set_response_code(code);
        m.add_queries(q.queries().to_vec());
        m.add_answers(records);
        m
    };
    let a = |n: &str, ttl: u32, ip: [u8; 4]| {
        Record::from_rdata(
            name(n),
            ttl,
            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
        )
    };
    let cname = |n: &str, ttl: u32, to: &str| {
        Record::from_rdata(name(n), ttl, RData::CNAME(CNAME(name(to))))
    };

    let mut cases: Vec<(&str, Message, Option<Message>)> = Vec::new();
    let q = query(0x1a2b, "api.example.test.", RecordType::A, true);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![a("api.example.test.", 60, [198, 18, 0, 10])],
    );
    cases.push(("a-allowed", q, Some(up)));
    let q = query(7, "x.cdn.example.test.", RecordType::A, false);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![
            cname("x.cdn.example.test.", 300, "edge.cdn-provider.test."),
            cname("edge.cdn-provider.test.", 30, "pop1.cdn-provider.test."),
            a("pop1.cdn-provider.test.", 20, [198, 18, 1, 1]),
            a("pop1.cdn-provider.test.", 20, [198, 18, 1, 2]),
        ],
    );
    cases.push(("a-cname-chain", q, Some(up)));
    let q = query(8, "api.example.test.", RecordType::A, true);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![
            a("api.example.test.", 60, [10, 0, 0, 1]),
            a("api.example.test.", 60, [169, 254, 169, 254]),
            a("api.example.test.", 60, [127, 0, 0, 1]),
        ],
    );
    cases.push(("a-private-addresses", q, Some(up)));
    let q = query(9, "exact.example.test.", RecordType::A, false);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![a("exact.example.test.", 5, [10, 1, 2, 7])],
    );
    cases.push(("a-cidr-exception", q, Some(up)));
    let q = query(10, "api.example.test.", RecordType::A, false);
    let many = (1..=12)
        .map(|i| a("api.example.test.", 3600, [198, 18, 2, i]))
        .collect();
    let up = answer(&q, ResponseCode::NoError, many);
    cases.push(("a-many-addresses", q, Some(up)));
    let q = query(11, "x.cdn.example.test.", RecordType::A, false);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![
            cname("x.cdn.example.test.", 60, "loop.test."),
            cname("loop.test.", 60, "x.cdn.example.test."),
        ],
    );
    cases.push(("a-cname-loop", q, Some(up)));
    let q = query(12, "api.example.test.", RecordType::A, false);
    let up = answer(&q, ResponseCode::NXDomain, vec![]);
    cases.push(("a-nxdomain", q, Some(up)));
    let q = query(13, "Api.Example.Test.", RecordType::A, false);
    let mut up = answer(
        &q,
        ResponseCode::NoError,
        vec![a("api.example.test.", 60, [198, 18, 0, 11])],
    );
    up.add_additional(Record::from_rdata(
        name("api.example.test."),
        60,
        RData::TXT(TXT::new(vec!["v=1".into()])),
    ));
    cases.push(("a-mixed-case", q, Some(up)));
    cases.push((
        "aaaa-allowed",
        query(14, "api.example.test.", RecordType::AAAA, true),
        None,
    ));
    cases.push((
        "txt-refused",
        query(15, "api.example.test.", RecordType::TXT, false),
        None,
    ));
    cases.push((
        "any-refused",
        query(16, "api.example.test.", RecordType::ANY, false),
        None,
    ));
    cases.push((
        "a-not-allowed",
        query(17, "evil.test.", RecordType::A, true),
        None,
    ));
    cases.push((
        "a-domain-itself",
        query(18, "cdn.example.test.", RecordType::A, false),
        None,
    ));
    let mut two = query(19, "api.example.test.", RecordType::A, false);
    two.add_query(Query::query(name("exact.example.test."), RecordType::A));
    cases.push(("two-questions", two, None));
    let mut chaos = query(20, "api.example.test.", RecordType::A, false);
    chaos.queries_mut()[0].set_query_class(DNSClass::CH);
    cases.push(("class-chaos", chaos, None));
    let mut notify = query(21, "api.example.test.", RecordType::SOA, false);
    notify.set_op_code(OpCode::Notify);
    cases.push(("opcode-notify", notify, None));
    let q = query(22, "api.example.test.", RecordType::A, false);
    let up = answer(
        &q,
        ResponseCode::NoError,
        vec![Record::from_rdata(
            name("api.example.test."),
            60,
            RData::AAAA(AAAA::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
            ))),
        )],
    );
    cases.push(("a-answered-with-aaaa", q, Some(up)));

    let dir = fuzz_dir().join("corpus").join("dns_query");
    std::fs::create_dir_all(&dir).unwrap();
    for (label, q, up) in cases {
        let q = q.to_vec().unwrap();
        let mut input = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        input.extend_from_slice(&q);
        if let Some(up) = up {
            input.extend_from_slice(&up.to_vec().unwrap());
        }
        std::fs::write(dir.join(format!("seed-{label}")), input).unwrap();
    }
}
