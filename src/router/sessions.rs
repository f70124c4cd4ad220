//! The client sessions the router can deliver to, with what each client can do and hear.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

pub use crate::mcp::context::{level_rank, LEVELS};
pub use crate::mcp::{ClientCaps, LogLevel};

/// Somewhere to deliver a serialized message to a client: a session's standalone stream, or
/// the stream of one request.
pub trait MessageSink: Send + Sync {
    fn send(&self, message: Bytes);

    /// [`MessageSink::send`] for a message that `server` sent; sinks that keep count of what
    /// they drop by origin use it.
    fn send_from(&self, server: &str, message: Bytes) {
        let _ = server;
        self.send(message);
    }
}

pub struct SessionInfo {
    pub key: Arc<str>,
    /// The policy's name of the client that opened it: what it sees depends on that client's
    /// rules, and so does whether a reload changes its lists.
    pub client: Arc<str>,
    pub caps: ClientCaps,
    /// Which server log messages it hears until it sets a level.
    pub log: LogLevel,
    pub sink: Arc<dyn MessageSink>,
}

pub(super) struct Entry {
    pub info: SessionInfo,
    /// Index into `LEVELS` of the least severe level this client wants; `UNSET` until it asks.
    level: AtomicU8,
}

const UNSET: u8 = u8::MAX;
const SILENT: u8 = u8::MAX - 1;

fn level_code(log: LogLevel) -> u8 {
    match log {
        LogLevel::Unset => UNSET,
        LogLevel::AtLeast(rank) => rank.min(SILENT - 1),
        LogLevel::Silent => SILENT,
    }
}

impl Entry {
    /// The log level this client asked for, however it asked (handshake era or per request).
    pub fn log_level(&self) -> LogLevel {
        match self.level.load(Ordering::Relaxed) {
            UNSET => LogLevel::Unset,
            SILENT => LogLevel::Silent,
            rank => LogLevel::AtLeast(rank),
        }
    }

    /// Whether a log message at `level` should reach this client.
    pub fn wants_log(&self, level: &str) -> bool {
        match self.level.load(Ordering::Relaxed) {
            UNSET => true,
            SILENT => false,
            min => level_rank(level).is_none_or(|r| r >= min),
        }
    }
}

#[derive(Default)]
pub(super) struct Sessions {
    map: RwLock<HashMap<Arc<str>, Arc<Entry>>>,
}

impl Sessions {
    pub fn open(&self, info: SessionInfo) {
        if let Ok(mut m) = self.map.write() {
            let level = AtomicU8::new(level_code(info.log));
            m.insert(info.key.clone(), Arc::new(Entry { info, level }));
        }
    }

    pub fn close(&self, key: &str) {
        if let Ok(mut m) = self.map.write() {
            m.remove(key);
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.map.read().ok().and_then(|m| m.get(key).cloned())
    }

    pub fn set_level(&self, key: &str, rank: u8) {
        if let Some(e) = self.get(key) {
            e.level.store(rank, Ordering::Relaxed);
        }
    }

    /// The most verbose level any session asked for, if any did.
    pub fn most_verbose_level(&self) -> Option<&'static str> {
        let m = self.map.read().ok()?;
        let min = m
            .values()
            .map(|e| e.level.load(Ordering::Relaxed))
            .filter(|l| *l < SILENT)
            .min()?;
        LEVELS.get(usize::from(min)).copied()
    }

    /// The open sessions, grouped by the client that opened them.
    pub fn by_client(&self) -> HashMap<Arc<str>, Vec<Arc<Entry>>> {
        let mut out: HashMap<Arc<str>, Vec<Arc<Entry>>> = HashMap::new();
        if let Ok(m) = self.map.read() {
            for e in m.values() {
                out.entry(e.info.client.clone())
                    .or_default()
                    .push(e.clone());
            }
        }
        out
    }
}
