//! Shared quotas in Redis: one atomic GCRA step over every quota a call takes.
//!
//! Each quota is one key holding its theoretical arrival time (TAT, microseconds of the Redis
//! server's clock, so replicas' clocks never matter). One call runs one script (EVALSHA; on
//! NOSCRIPT the client loads it and retries) over all keys that apply: either every quota has
//! room and all are advanced, or none is touched and the first full one is reported, with the
//! time until it has room. Keys expire when their quota has refilled, so idle clients cost
//! nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::policy::{QuotaStore, Rate, SecretRef};

/// GCRA over KEYS; ARGV holds (emission interval µs, burst) per key. Returns {0, 0} when every
/// quota had room (all advanced), else {index (1-based), µs until that quota has room}.
/// Integers are written with %.0f: Lua turns a large number into "1.7e+15" by default.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - interval * burst
  if allow_at > now then
    return {i, allow_at - now}
  end
  tats[i] = next_tat
end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', string.format('%.0f', ttl))
end
return {0, 0}
"#;

/// After a failed connect, calls go straight to `on_store_error` for this long instead of each
/// waiting for a connect timeout; the manager reconnects on its own once connected.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quota store {store} did not answer within {}ms", .timeout.as_millis())]
    Timeout { store: String, timeout: Duration },
    #[error("quota store {store}: {reason}")]
    Redis { store: String, reason: String },
    #[error("quota store {store}: its password could not be read: {reason}")]
    Password { store: String, reason: String },
    #[error("quota store {store} is unreachable (retrying in the background)")]
    Paused { store: String },
    #[error("quota store {store} answered something other than the quota script's result")]
    Answer { store: String },
}

/// One quota a call takes: its key (names the scope and the quota's own settings, so a changed
/// quota starts afresh, as a reload does locally) and its rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub key: String,
    pub rate: Rate,
}

/// Which step was refused and when its quota has room again.
#[derive(Debug, Clone, PartialEq)]
pub struct Full {
    pub index: usize,
    pub retry_after: Duration,
}

pub struct RedisQuotas {
    pub config: QuotaStore,
    script: redis::Script,
    manager: OnceCell<ConnectionManager>,
    failed_at: Mutex<Option<Instant>>,
}

impl RedisQuotas {
    pub fn new(config: QuotaStore) -> RedisQuotas {
        RedisQuotas {
            config,
            script: redis::Script::new(GCRA),
            manager: OnceCell::new(),
            failed_at: Mutex::new(None),
        }
    }

    fn store(&self) -> String {
        self.config.display()
    }

    fn url(&self) -> Result<String, StoreError> {
        let c = &self.config;
        let scheme = if c.tls { "rediss" } else { "redis" };
        let host = if c.host.contains(':') {
            format!("[{}]", c.host)
        } else {
            c.host.clone()
        };
        let auth = match &c.password {
            Some(r) => {
                let p = read_password(r).map_err(|reason| StoreError::Password {
                    store: self.store(),
                    reason,
                })?;
                let enc =
                    percent_encoding::utf8_percent_encode(&p, percent_encoding::NON_ALPHANUMERIC);
                format!(":{enc}@")
            }
            None => String::new(),
        };
        Ok(format!("{scheme}://{auth}{host}:{}/{}", c.port, c.db))
    }

    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        if self.config.tls {
            // The redis crate builds its rustls config from the process-wide provider, which
            // nothing installs (the gateway's own TLS names ring explicitly): without this a
            // `rediss://` store panicked on its first connect. Ring, as everywhere else here; a
            // provider installed already is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let redis_err = |e: redis::RedisError| StoreError::Redis {
            store: self.store(),
            reason: e.to_string(),
        };
        let client = match &self.config.ca_file {
            // A private Redis's CA, trusted instead of the system roots.
            Some(ca) if self.config.tls => {
                let root = std::fs::read(ca).map_err(|e| StoreError::Redis {
                    store: self.store(),
                    reason: format!("cannot read store_ca {}: {e}", ca.display()),
                })?;
                redis::Client::build_with_tls(
                    self.url()?,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
                .map_err(redis_err)?
            }
            _ => redis::Client::open(self.url()?).map_err(redis_err)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_err)
    }

    async fn manager(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let paused = self
            .failed_at
            .lock()
            .map(|f| f.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE))
            .unwrap_or(false);
        if paused {
            return Err(StoreError::Paused {
                store: self.store(),
            });
        }
        match self.manager.get_or_try_init(|| self.connect()).await {
            Ok(m) => Ok(m.clone()),
            Err(e) => {
                self.pause();
                Err(e)
            }
        }
    }

    /// One GCRA step over `steps`, bounded by the store timeout (connect included).
    pub async fn step(&self, steps: &[Step]) -> Result<Option<Full>, StoreError> {
        if steps.is_empty() {
            return Ok(None);
        }
        let timeout = self.config.timeout;
        let started = Instant::now();
        let r = tokio::time::timeout(timeout, self.step_unbounded(steps)).await;
        crate::metrics::global().quota_store_step(started.elapsed(), r.is_ok());
        let r = r.map_err(|_| StoreError::Timeout {
            store: self.store(),
            timeout,
        });
        // A connect cut short by the timeout pauses connecting too, not only a failed one.
        if matches!(r, Err(_) | Ok(Err(_))) && self.manager.get().is_none() {
            self.pause();
        }
        r?
    }

    fn pause(&self) {
        if let Ok(mut f) = self.failed_at.lock() {
            *f = Some(Instant::now());
        }
    }

    async fn step_unbounded(&self, steps: &[Step]) -> Result<Option<Full>, StoreError> {
        let mut con = self.manager().await?;
        let mut inv = self.script.prepare_invoke();
        for s in steps {
            let (interval, burst) = gcra_args(&s.rate);
            inv.key(&s.key).arg(interval).arg(burst);
        }
        let answer: Vec<i64> = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| StoreError::Redis {
                store: self.store(),
                reason: e.to_string(),
            })?;
        match answer.as_slice() {
            [0, _] => Ok(None),
            [i, us] if *i >= 1 && (*i as usize) <= steps.len() => Ok(Some(Full {
                index: *i as usize - 1,
                retry_after: Duration::from_micros((*us).max(0) as u64),
            })),
            _ => Err(StoreError::Answer {
                store: self.store(),
            }),
        }
    }

    /// Whether the store answers a PING within its timeout (for `/ready`).
    pub async fn reachable(&self) -> bool {
        let ping = async {
            let mut con = self.manager().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(self.config.timeout, ping).await,
            Ok(Some(_))
        )
    }
}

fn read_password(r: &SecretRef) -> Result<String, String> {
    crate::secrets::resolve("password", r).map_err(|e| e.to_string())
}

/// The emission interval (µs per call) and burst of `rate`, as the script takes them.
pub fn gcra_args(rate: &Rate) -> (u64, u64) {
    let per = rate.per.as_micros() as u64;
    let interval = (per / u64::from(rate.count.max(1))).max(1);
    (interval, u64::from(rate.burst.max(1)))
}

/// The key of one quota: the fleet prefix, the scope's parts (each length-prefixed so that no
/// client or tool name can forge another's key), and the quota's own settings.
pub fn key(scope: &str, parts: &[&str], rate: &Rate) -> String {
    let mut k = format!("portcullis:q:{scope}");
    for p in parts {
        k.push_str(&format!(":{}.{p}", p.len()));
    }
    let (interval, burst) = gcra_args(rate);
    k.push_str(&format!(":{interval}x{burst}"));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, secs: u64, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(secs),
            burst,
        }
    }

    #[test]
    fn keys_cannot_be_forged_by_names_with_separators() {
        let r = rate(10, 60, 10);
        assert_ne!(
            key("server", &["a:b", "c"], &r),
            key("server", &["a", "b:c"], &r)
        );
        assert_ne!(
            key("client", &["a"], &r),
            key("client", &["a"], &rate(20, 60, 10))
        );
    }

    #[test]
    fn gcra_arguments() {
        assert_eq!(gcra_args(&rate(10, 60, 5)), (6_000_000, 5));
        assert_eq!(gcra_args(&rate(0, 1, 0)), (1_000_000, 1));
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_within_its_timeout() {
        // Port 1 on loopback: nothing listens, the connect is refused at once.
        let q = RedisQuotas::new(QuotaStore {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1,
            db: 0,
            password: None,
            on_error: crate::policy::OnStoreError::Deny,
            replicas: 1,
            timeout: Duration::from_millis(200),
            ca_file: None,
        });
        let steps = [Step {
            key: "k".into(),
            rate: rate(1, 1, 1),
        }];
        let started = Instant::now();
        assert!(q.step(&steps).await.is_err());
        assert!(matches!(
            q.step(&steps).await,
            Err(StoreError::Paused { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!q.reachable().await);
    }
}
