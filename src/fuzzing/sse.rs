//! The upstream client's `text/event-stream` parser, and what the client does with the events
//! it yields (legacy `endpoint` events, `message` events).

use http::Uri;

use crate::mcp::Message;
use crate::upstream::http::resolve_endpoint;
use crate::upstream::http::sse::Parser;

/// The first byte picks the parser's size limit and how the rest is cut into chunks; the rest
/// is the stream.
pub fn sse_stream(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    // Small limits, so that the size checks are reached.
    let max = 16 + usize::from(ctl) * 8;
    let whole = Parser::new(max).feed(stream);

    // The same bytes in chunks must give the same events: the network cuts anywhere.
    let step = usize::from(ctl % 13) + 1;
    let mut parser = Parser::new(max);
    let mut chunked = Vec::new();
    let mut failed = None;
    for chunk in stream.chunks(step) {
        match parser.feed(chunk) {
            Ok(evs) => chunked.extend(evs),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let events = match whole {
        Ok(evs) => {
            assert_eq!(failed, None, "only the chunked stream failed");
            assert_eq!(evs, chunked, "chunking changed the events");
            evs
        }
        Err(e) => {
            assert_eq!(failed, Some(e), "only the whole stream failed");
            return;
        }
    };

    let base: Uri = Uri::from_static("http://127.0.0.1:9000/sse");
    for ev in events {
        // Lossy decoding turns each invalid byte into one character, so characters <= bytes.
        assert!(
            ev.data.chars().count() <= max,
            "an event over the limit was dispatched"
        );
        match ev.event.as_str() {
            "endpoint" => {
                // Credentials go wherever the endpoint points: never to another origin.
                if let Ok(uri) = resolve_endpoint(&base, ev.data.trim()) {
                    assert_eq!(uri.scheme(), base.scheme(), "endpoint {uri}");
                    assert_eq!(uri.authority(), base.authority(), "endpoint {uri}");
                }
            }
            "message" => {
                let _ = Message::parse(ev.data.as_bytes());
            }
            _ => {}
        }
    }
}
