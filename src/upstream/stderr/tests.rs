use std::time::Duration;

use super::*;

/// Captures what the gateway logs.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(lock(&self.0).clone()).expect("utf-8 log")
    }
}

#[derive(Clone, Copy)]
enum Format {
    Text,
    Json,
}

fn subscriber(sink: &Sink, format: Format) -> tracing::Dispatch {
    let writer = sink.clone();
    let fmt = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false);
    match format {
        Format::Text => tracing::Dispatch::new(fmt.finish()),
        Format::Json => tracing::Dispatch::new(fmt.json().finish()),
    }
}

fn rate(count: u32, burst: u32) -> Rate {
    Rate {
        count,
        per: Duration::from_secs(1),
        burst,
    }
}

fn input(bytes: Vec<u8>) -> BoxRead {
    Box::new(std::io::Cursor::new(bytes))
}

/// Runs the forwarder over `bytes` as server `server`, logging in `format`.
async fn run(
    server: &str,
    r: Rate,
    bytes: Vec<u8>,
    redactor: Redactor,
    format: Format,
) -> (Arc<ServerStderr>, String) {
    let sink = Sink::default();
    let _guard = tracing::dispatcher::set_default(&subscriber(&sink, format));
    let log = ServerStderr::new(server, r);
    forward(log.clone(), input(bytes), Arc::new(redactor)).await;
    (log, sink.text())
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_logged_up_to_its_budget_and_summarized() {
    let flood: Vec<u8> = (0..10_000)
        .flat_map(|i| format!("flood line {i} {}\n", "x".repeat(200)).into_bytes())
        .collect();
    let (log, out) = run(
        "stderr-flood-unit",
        rate(10, 20),
        flood,
        Redactor::new([]),
        Format::Text,
    )
    .await;
    let forwarded = out.lines().filter(|l| l.contains("flood line")).count();
    let summaries: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("counted, not logged"))
        .collect();
    assert_eq!(forwarded, 20, "the burst, no more (paused time: no refill)");
    // One at the first suppressed line, one for the rest once the interval has passed.
    assert_eq!(summaries.len(), 2, "{out}");
    assert!(summaries[0].contains("suppressed=1 "), "{}", summaries[0]);
    assert!(
        summaries[1].contains("suppressed=9979 "),
        "{}",
        summaries[1]
    );
    assert!(
        summaries[1].contains("server=stderr-flood-unit"),
        "{}",
        summaries[1]
    );
    assert_eq!(log.forwarded.load(Ordering::Relaxed), 20);
    assert_eq!(log.suppressed.load(Ordering::Relaxed), 9_980);
    let metrics = crate::metrics::global().render();
    assert!(
        metrics.contains(r#"portcullis_server_stderr_lines_total{server="stderr-flood-unit",outcome="suppressed"} 9980"#),
        "{metrics}"
    );
    // The tail has the last lines, suppressed or not.
    let tail = log.tail();
    assert_eq!(tail.len(), TAIL_LINES);
    assert!(
        tail[TAIL_LINES - 1].starts_with("flood line 9999 "),
        "{:?}",
        tail.last()
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_at_its_rate() {
    let sink = Sink::default();
    let _guard = tracing::dispatcher::set_default(&subscriber(&sink, Format::Text));
    let log = ServerStderr::new("stderr-refill-unit", rate(10, 5));
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(forward(
        log.clone(),
        Box::new(r),
        Arc::new(Redactor::new([])),
    ));
    use tokio::io::AsyncWriteExt;
    // 100 lines a second for 3 seconds: the log gets the burst and then 10 a second.
    for i in 0..300 {
        w.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(w);
    task.await.unwrap();
    let forwarded = log.forwarded.load(Ordering::Relaxed);
    assert!((33..=37).contains(&forwarded), "{forwarded}");
    assert_eq!(forwarded + log.suppressed.load(Ordering::Relaxed), 300);
}

const FORGED: &str = "starting\n2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other audit log lost\n";

/// What a hostile server writes in one "line": a line break followed by text shaped like the
/// gateway's own lines, and ANSI sequences that would recolour or erase the terminal.
fn hostile() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        b"ok\r2026-12-05T10:00:00Z ERROR portcullis: level=ERROR server=other forged\n",
    );
    b.extend_from_slice(b"\x1b[2J\x1b[1;31mFATAL\x1b[0m \xc2\x9b31m \xe2\x80\xae reversed\n");
    b
}

#[tokio::test]
async fn a_forged_line_and_ansi_stay_escaped_and_attributed_in_text_format() {
    let mut bytes = FORGED.as_bytes().to_vec();
    bytes.extend(hostile());
    let (_, out) = run(
        "hostile-text",
        rate(100, 100),
        bytes,
        Redactor::new([]),
        Format::Text,
    )
    .await;
    assert!(
        !out.contains('\x1b') && !out.contains('\r') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "one log line per stderr line: {out}");
    for l in &lines {
        // The gateway's own timestamp and level, the server's name, then what it wrote.
        let (stamp, _) = l
            .split_once("  INFO portcullis::upstream::stderr: server=hostile-text ")
            .unwrap_or_else(|| panic!("not attributed: {l}"));
        assert!(!stamp.contains(' '), "{l}");
    }
    assert!(lines[1].ends_with("server=hostile-text 2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other audit log lost"), "{}", lines[1]);
    assert!(lines[2].ends_with(r"server=hostile-text ok\r2026-12-05T10:00:00Z ERROR portcullis: level=ERROR server=other forged"), "{}", lines[2]);
    assert!(
        lines[3].contains(r"\x1b[2J\x1b[1;31mFATAL\x1b[0m \u{9b}31m \u{202e} reversed"),
        "{}",
        lines[3]
    );
}

#[tokio::test]
async fn a_forged_line_and_ansi_stay_escaped_and_attributed_in_json_format() {
    let mut bytes = FORGED.as_bytes().to_vec();
    bytes.extend(hostile());
    let (_, out) = run(
        "hostile-json",
        rate(100, 100),
        bytes,
        Redactor::new([]),
        Format::Json,
    )
    .await;
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 4, "{out}");
    for r in &records {
        assert_eq!(r["fields"]["server"], "hostile-json", "{r}");
        assert_eq!(r["level"], "INFO", "{r}");
        // Decoded, the message still holds no control character: a reader that prints it
        // (`jq -r`) shows one line.
        let m = r["fields"]["message"].as_str().expect("message");
        assert!(
            !m.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{m:?}"
        );
    }
    assert_eq!(records[0]["fields"]["message"], "starting");
    assert_eq!(
        records[1]["fields"]["message"],
        "2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other audit log lost"
    );
    assert_eq!(
        records[2]["fields"]["message"],
        r"ok\r2026-12-05T10:00:00Z ERROR portcullis: level=ERROR server=other forged"
    );
}

#[tokio::test]
async fn secrets_are_redacted_even_when_a_cut_goes_through_one() {
    let secret = "sk-live-0123456789abcdef";
    let redactor = Redactor::new([("API_KEY", secret)]);
    let mut long = "y".repeat(MAX_LINE - 10).into_bytes();
    long.extend_from_slice(secret.as_bytes());
    long.extend_from_slice(b" and more\n");
    let mut bytes = format!("starting with key {secret}\n").into_bytes();
    bytes.extend(long);
    let (log, out) = run(
        "stderr-redact-unit",
        rate(100, 100),
        bytes,
        redactor,
        Format::Text,
    )
    .await;
    assert!(
        out.contains("starting with key [REDACTED:API_KEY]"),
        "{out}"
    );
    assert!(
        !out.contains("sk-live"),
        "a cut secret leaked its beginning: {out}"
    );
    assert!(
        out.contains(&format!(
            "[cut: the line had {} bytes]",
            MAX_LINE - 10 + secret.len() + 9
        )),
        "{out}"
    );
    let tail = log.tail().join("\n");
    assert!(!tail.contains("sk-live"), "{tail}");
    assert!(tail.contains("[REDACTED:API_KEY]"), "{tail}");
}
