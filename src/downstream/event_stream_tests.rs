//! Tests of the resumable streams: delivery, resumption, the bounds and the drop warning.

use super::*;
use http_body_util::BodyExt;

async fn collect(body: SseBody) -> String {
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn delivers_then_ends_when_closed() {
    let s = EventStream::new(3, Arc::from("t"));
    s.push(Bytes::from_static(b"{\"a\":1}"));
    s.push(Bytes::from_static(b"{\"a\":2}"));
    s.close();
    let text = collect(body(
        s.attach(None).unwrap(),
        true,
        Duration::from_secs(5),
        None,
    ))
    .await;
    assert!(
        text.starts_with("id: 3-0\nretry: 1000\ndata: \n\n"),
        "{text}"
    );
    assert!(text.contains("id: 3-1\nevent: message\ndata: {\"a\":1}\n\n"));
    assert!(text.contains("id: 3-2\n"));
}

#[tokio::test]
async fn resumes_after_last_event_id_and_refuses_second_reader() {
    let s = EventStream::new(1, Arc::from("t"));
    for i in 0..3 {
        s.push(Bytes::from(format!("{{\"n\":{i}}}")));
    }
    let r = s.attach(None).unwrap();
    assert!(s.attach(None).is_none(), "second concurrent reader");
    drop(r);
    s.close();
    let text = collect(body(
        s.attach(Some(2)).unwrap(),
        false,
        Duration::from_secs(5),
        None,
    ))
    .await;
    assert!(
        !text.contains("\"n\":0") && !text.contains("\"n\":1"),
        "{text}"
    );
    assert!(
        text.contains("id: 1-3\n") && text.contains("\"n\":2"),
        "{text}"
    );
    assert_eq!(parse_event_id("1-3"), Some((1, 3)));
    assert_eq!(parse_event_id("x"), None);
}

#[tokio::test]
async fn polling_ends_the_response_but_keeps_the_stream() {
    let s = EventStream::new(4, Arc::from("t"));
    let early = collect(body(
        s.attach(None).unwrap(),
        true,
        Duration::from_secs(5),
        Some(Duration::from_millis(20)),
    ))
    .await;
    assert!(early.starts_with("id: 4-0\n"), "{early}");
    s.push(Bytes::from_static(b"{\"late\":true}"));
    s.close();
    let rest = collect(body(
        s.attach(Some(0)).unwrap(),
        false,
        Duration::from_secs(5),
        None,
    ))
    .await;
    assert!(
        rest.contains("id: 4-1\n") && rest.contains("late"),
        "{rest}"
    );
}

#[tokio::test]
async fn first_event_returns_on_the_first_push_or_at_the_bound() {
    let s = EventStream::new(5, Arc::from("t"));
    // Nothing comes: it gives up at its bound rather than waiting for ever.
    let gave_up = tokio::time::timeout(
        Duration::from_secs(10),
        s.first_event(Duration::from_millis(5)),
    )
    .await;
    assert!(gave_up.is_ok(), "did not return at its bound");
    // A push wakes it long before its (one-hour) bound.
    let pusher = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        pusher.push(Bytes::from_static(b"{}"));
    });
    let woke = tokio::time::timeout(
        Duration::from_secs(10),
        s.first_event(Duration::from_secs(3600)),
    )
    .await;
    assert!(woke.is_ok(), "a push did not end the wait");
    // A closed stream has nothing more to wait for.
    let closed = EventStream::new(6, Arc::from("t"));
    closed.close();
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        closed.first_event(Duration::from_secs(3600)),
    )
    .await;
    assert!(done.is_ok(), "waited on a closed stream");
}

/// Everything a reader resuming after `seq` gets from a closed stream.
async fn read_from(s: &Arc<EventStream>, seq: u64) -> String {
    let reader = s.attach(Some(seq)).unwrap();
    collect(body(reader, false, Duration::from_secs(5), None)).await
}

fn notification(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"n{i}"}}}}"#
    ))
}

fn response(len: usize) -> Bytes {
    let mut v = br#"{"jsonrpc":"2.0","id":1,"result":{"t":""#.to_vec();
    v.resize(len - 3, b'a');
    v.extend_from_slice(br#""}}"#);
    Bytes::from(v)
}

#[tokio::test]
async fn a_message_larger_than_the_whole_buffer_is_delivered_unchanged() {
    // The regression of issue 29: an answer over MAX_BYTES was evicted as it was pushed.
    let s = EventStream::new(2, Arc::from("t"));
    let answer = response(MAX_BYTES + (1 << 20));
    s.push(answer.clone());
    s.close();
    let mut reader = s.attach(None).unwrap();
    let Next::Data(frames) = reader.next(Duration::from_secs(5), None).await else {
        panic!("ended without the answer");
    };
    assert!(
        frames
            .iter()
            .any(|f| f.as_ptr() == answer.as_ptr() && f.len() == answer.len()),
        "the answer was copied or cut rather than sent as it was buffered"
    );
    let text: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
    assert!(text.starts_with(b"id: 2-1\nevent: message\ndata: {"));
    assert!(text.ends_with(b"\"}}\n\n"));
}

#[tokio::test]
async fn under_pressure_notifications_go_the_answer_stays_and_the_client_is_told_once() {
    let s = EventStream::new(7, Arc::from("t"));
    for i in 0..2000 {
        s.push(notification(i));
    }
    let answer = response(20 << 20);
    s.push(answer.clone());
    s.close();
    let text = read_from(&s, 0).await;
    let dropped = 2000 - MAX_EVENTS;
    let warning = text.find("dropped").expect("no warning");
    assert!(
        text.contains(&format!("portcullis dropped {dropped} notification(s)")),
        "{}",
        &text[..400]
    );
    // In place of what was dropped: before the first notification left, with the id just
    // before it, so resuming after the warning misses nothing.
    let first_left = text.find(&format!("\"n{dropped}\"")).unwrap();
    assert!(warning < first_left);
    assert!(
        text.starts_with(&format!("id: 7-{dropped}\n")),
        "{}",
        &text[..100]
    );
    assert!(!text.contains(&format!("\"n{}\"", dropped - 1)));
    assert_eq!(
        text.matches("portcullis dropped").count(),
        1,
        "one warning per burst"
    );
    assert!(text.contains(&format!("id: 7-{}\n", 2001)));
    assert!(
        text.contains(std::str::from_utf8(&answer).unwrap()),
        "the answer is whole"
    );
    // Nothing new was dropped: a second reader gets no second warning.
    let again = read_from(&s, 0).await;
    assert!(!again.contains("dropped"));
}

#[tokio::test]
async fn notification_bytes_are_bounded_but_the_newest_is_kept() {
    let s = EventStream::new(8, Arc::from("t"));
    let big = |i: usize| {
        let mut v = notification(i).to_vec();
        v.truncate(v.len() - 3);
        v.resize(3 << 20, b'x');
        v.extend_from_slice(b"\"}}");
        Bytes::from(v)
    };
    for i in 0..4 {
        s.push(big(i));
    }
    let st = s.state.lock().unwrap();
    assert!(
        st.notification_bytes <= MAX_BYTES,
        "{}",
        st.notification_bytes
    );
    assert_eq!(st.unreported, 2);
    drop(st);
    let huge = Bytes::from({
        let mut v = notification(9).to_vec();
        v.truncate(v.len() - 3);
        v.resize(MAX_BYTES + 1, b'y');
        v.extend_from_slice(b"\"}}");
        v
    });
    s.push(huge);
    let st = s.state.lock().unwrap();
    assert_eq!(st.events.len(), 1, "only the newest is left");
    assert!(st.notification_bytes > MAX_BYTES);
}

#[tokio::test]
async fn keepalive_comments_flow_while_idle() {
    let s = EventStream::new(0, Arc::from("t"));
    let mut reader = s.attach(None).unwrap();
    match reader.next(Duration::from_millis(10), None).await {
        Next::Data(b) => assert_eq!(&b[0][..], b": keep-alive\n\n"),
        Next::End => panic!("ended"),
    }
}

#[tokio::test]
async fn answers_already_sent_are_kept_within_the_bounds_and_a_late_resume_is_told() {
    // A long-lived stream (legacy SSE, the standalone stream) carries answer after answer.
    let s = EventStream::new(9, Arc::from("t"));
    let mut reader = s.attach(None).unwrap();
    for _ in 0..40 {
        s.push(response(1 << 20));
        let Next::Data(_) = reader.next(Duration::from_secs(5), None).await else {
            panic!("ended");
        };
    }
    {
        let st = s.state.lock().unwrap();
        let kept: usize = st.events.iter().map(|e| e.message.len()).sum();
        assert!(kept <= MAX_BYTES, "{kept} bytes of sent answers kept");
        assert_eq!(st.unreported, 0, "sent answers are not reported as dropped");
    }
    drop(reader);
    // A finished stream lets go of a large answer once it is on its way; a client whose
    // connection broke before it arrived gets an error for that request, not silence.
    let s = EventStream::new(10, Arc::from("t"));
    s.push(response(20 << 20));
    s.close();
    let first = read_from(&s, 0).await;
    assert!(first.len() > 20 << 20);
    let again = read_from(&s, 0).await;
    assert!(again.contains("id: 10-1\n"), "{again}");
    assert!(
        again.contains(r#""id":1,"error":{"code":-32012"#)
            && again.contains("send the request again"),
        "{again}"
    );
    assert!(again.len() < 4096, "the answer itself is no longer held");
}
