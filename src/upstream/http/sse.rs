//! An incremental, bounded parser for `text/event-stream` (the WHATWG "server-sent events"
//! format), as remote MCP servers send it.
//!
//! It takes the body in whatever chunks the network delivers and yields complete events. Every
//! buffer is bounded: a line or an event larger than the limit is an error rather than a way to
//! exhaust the gateway's memory. Any byte sequence is accepted without panicking (this parser is
//! a fuzz target); invalid UTF-8 is decoded lossily, as the format prescribes.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field of this event, if it set one.
    pub id: Option<String>,
    /// A `retry:` reconnection delay in milliseconds, if one arrived with this event.
    pub retry: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event is larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug)]
pub struct Parser {
    max: usize,
    /// The line being read (without its terminator).
    line: Vec<u8>,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    id: Option<Vec<u8>>,
    retry: Option<u64>,
}

impl Parser {
    /// A parser refusing lines or events over `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Parser {
        Parser {
            max: max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            event: Vec::new(),
            id: None,
            retry: None,
        }
    }

    /// Feeds the next chunk; returns the events it completed. After an error the parser should
    /// be dropped (the stream is unusable).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(i) => {
                    self.push_line_bytes(&rest[..i])?;
                    let cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    if cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            // The `\n` of a `\r\n` may arrive in the next chunk.
                            None => self.after_cr = true,
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.process_line(line)? {
                        out.push(ev);
                    }
                }
                None => {
                    self.push_line_bytes(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(out)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() + self.data.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: Vec<u8>) -> Result<Option<Event>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None); // a comment (keep-alive)
        }
        let (field_end, value_start) = match line.iter().position(|b| *b == b':') {
            Some(i) if line.get(i + 1) == Some(&b' ') => (i, i + 2),
            Some(i) => (i, i + 1),
            None => (line.len(), line.len()),
        };
        let value = &line[value_start..];
        match &line[..field_end] {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::TooLarge(self.max));
                }
                if self.has_data {
                    self.data.push(b'\n');
                    self.data.extend_from_slice(value);
                } else {
                    // The first data line becomes the event's buffer: a large event is not
                    // held twice while it is read.
                    let mut data = line;
                    data.drain(..value_start);
                    self.data = data;
                }
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // An id with NUL is ignored, as the format says.
            b"id" if !value.contains(&0) => self.id = Some(value.to_vec()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let retry = self.retry.take();
        if !self.has_data {
            // An event without data lines (e.g. an id-only marker) is not dispatched.
            self.data.clear();
            return None;
        }
        self.has_data = false;
        let data = String::from_utf8(std::mem::take(&mut self.data))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Some(Event {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                String::from_utf8_lossy(&event).into_owned()
            },
            data,
            id: id.map(|i| String::from_utf8_lossy(&i).into_owned()),
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Event> {
        Parser::new(1 << 20).feed(input).unwrap()
    }

    #[test]
    fn parses_messages_comments_and_fields() {
        let evs = all(b": keep-alive\n\nid: 1-2\nevent: message\ndata: {\"a\":1}\n\nevent: endpoint\ndata: /messages?session_id=x\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "message");
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[0].id.as_deref(), Some("1-2"));
        assert_eq!(evs[1].event, "endpoint");
        assert_eq!(evs[1].data, "/messages?session_id=x");
    }

    #[test]
    fn joins_data_lines_and_handles_every_line_ending() {
        let evs = all(b"data: a\r\ndata:b\rdata:  c\n\r\n");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "a\nb\n c");
    }

    #[test]
    fn events_split_across_chunks_at_any_byte() {
        let input = b"event: message\r\ndata: {\"x\":\"y\"}\r\n\r\nretry: 500\r\ndata: 2\r\n\r\n";
        for split in 0..input.len() {
            let mut p = Parser::new(1024);
            let mut evs = p.feed(&input[..split]).unwrap();
            evs.extend(p.feed(&input[split..]).unwrap());
            assert_eq!(evs.len(), 2, "split at {split}");
            assert_eq!(evs[0].data, "{\"x\":\"y\"}");
            assert_eq!(evs[1].data, "2");
            assert_eq!(evs[1].retry, Some(500));
        }
    }

    #[test]
    fn priming_events_without_data_are_not_dispatched() {
        let evs = all(b"id: 0\nretry: 1000\ndata: \n\nid: 9\n\n");
        // `data: ` with an empty value is still data (an empty string).
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "");
    }

    #[test]
    fn oversized_lines_and_events_are_refused() {
        let mut p = Parser::new(16);
        assert_eq!(p.feed(&[b'a'; 17]), Err(SseError::TooLarge(16)));
        let mut p = Parser::new(16);
        assert!(p.feed(b"data: 0123456\n").is_ok());
        assert!(p.feed(b"data: 0123456789\n").is_err());
    }

    #[test]
    fn survives_arbitrary_bytes() {
        // A cheap deterministic stand-in for the fuzzer: pseudo-random bytes, random chunking.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut p = Parser::new(256);
            for _ in 0..50 {
                let mut chunk = Vec::new();
                for _ in 0..(x % 40) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.push(
                        [b'\n', b'\r', b':', b' ', b'd', b'a', b't', 0xff, 0][(x % 9) as usize],
                    );
                }
                x = x.wrapping_add(1);
                if p.feed(&chunk).is_err() {
                    break;
                }
            }
        }
    }
}
