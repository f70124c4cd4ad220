//! The Docker test harness decides whether to start an engine by asking the socket, not by
//! looking for the file (issue 24, part 3): a socket left by a dockerd that was killed is a
//! file with nothing behind it, and every Docker test used to fail on it with "building the
//! test images failed". These tests make such sockets in a temporary directory, so the
//! running engine is never touched; they need no privileges.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::docker::{probe, start_reason, Engine};

const LIMIT: Duration = Duration::from_millis(500);

#[test]
fn a_missing_socket_means_start_an_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    assert_eq!(probe(&socket, LIMIT), Engine::Missing);
    let why = start_reason(&socket, &Engine::Missing).expect("start one");
    assert!(why.ends_with("docker.sock does not exist"), "{why}");
}

#[test]
fn a_stale_socket_left_by_a_dead_engine_means_start_an_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    // What a dockerd killed with SIGKILL leaves: the socket file, nobody listening.
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "the stale socket file stays");
    let engine = probe(&socket, LIMIT);
    let Engine::Silent(detail) = &engine else {
        panic!("a stale socket was taken for an engine: {engine:?}");
    };
    assert!(detail.contains("Connection refused"), "{detail}");
    let why = start_reason(&socket, &engine).expect("start one");
    assert!(
        why.contains("exists but no Docker engine answers on it"),
        "{why}"
    );
}

#[test]
fn a_socket_that_accepts_but_never_answers_means_start_an_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Accepts and holds the connection without a word (a hung engine).
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let started = Instant::now();
    let engine = probe(&socket, LIMIT);
    assert!(matches!(engine, Engine::Silent(_)), "{engine:?}");
    assert!(started.elapsed() < LIMIT * 4, "{:?}", started.elapsed());
    drop(holder.join());
}

#[test]
fn a_file_that_is_no_socket_means_start_an_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    std::fs::write(&socket, b"not a socket").expect("write");
    assert!(matches!(probe(&socket, LIMIT), Engine::Silent(_)));
}

#[test]
fn an_engine_that_answers_the_ping_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Answers like dockerd's /_ping.
    let engine = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut request = [0u8; 256];
        let n = s.read(&mut request).expect("read");
        let request = String::from_utf8_lossy(&request[..n]).to_string();
        s.write_all(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK")
            .expect("answer");
        request
    });
    assert_eq!(probe(&socket, LIMIT), Engine::Answers);
    assert_eq!(start_reason(&socket, &Engine::Answers), None);
    let request = engine.join().expect("fake engine");
    assert!(request.starts_with("GET /_ping HTTP/1.0\r\n"), "{request}");
}

#[test]
fn something_else_answering_is_not_an_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let _ = s.read(&mut [0u8; 256]);
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n");
    });
    assert!(matches!(probe(&socket, LIMIT), Engine::Silent(d) if d.contains("404")));
}
