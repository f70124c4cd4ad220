//! Docker for tests: makes sure an engine is running and the test images are built.
//!
//! dockerd: when no engine answers on `/var/run/docker.sock` (the socket is missing, or it is a
//! stale file left by a dockerd that died), `tests/setup/dockerd.sh start LOCK` starts one.
//! Every test process that needs the engine holds a shared flock on LOCK for its whole life; the
//! script's reaper takes the lock exclusively, which succeeds only once the last test process has
//! exited (the kernel drops a process's locks when it exits, even when it crashes), and then stops
//! the dockerd it started. An engine that was already running is never stopped.
//!
//! Under `CI=true` a missing engine or image fails the test; locally the test is skipped with a
//! loud message.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::sandbox::docker::DockerRuntime;

pub const FIXTURE_IMAGE: &str = "portcullis/fixture:test";
/// The reference `mcp-server-time` (Python) assembled by tests/docker/time-image.sh.
pub const TIME_IMAGE: &str = "portcullis/mcp-time:test";
const SOCKET: &str = "/var/run/docker.sock";
const STATE_DIR: &str = "/tmp/portcullis-dockerd";
/// How long an engine may take to answer `GET /_ping` before it counts as not answering.
const PING_LIMIT: Duration = Duration::from_secs(5);

/// Held for the life of the test process (see the module comment).
static USER_LOCK: OnceLock<Result<nix::fcntl::Flock<File>, String>> = OnceLock::new();
static READY: OnceLock<Result<(), String>> = OnceLock::new();
static ENGINE: OnceLock<Result<(), String>> = OnceLock::new();

fn skip_or_fail(msg: &str) -> Option<()> {
    super::skip_or_fail(msg);
    None
}

fn lock_path() -> PathBuf {
    PathBuf::from(STATE_DIR).join("users.lock")
}

fn take_user_lock() -> Result<nix::fcntl::Flock<File>, String> {
    std::fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path())
        .map_err(|e| format!("{}: {e}", lock_path().display()))?;
    // Blocks while a reaper is stopping an engine; we then start a fresh one.
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| format!("flock {}: {e}", lock_path().display()))
}

/// What is at the engine's socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// An engine answered `GET /_ping`.
    Answers,
    /// Nothing at the path.
    Missing,
    /// Something is at the path but no engine answers there, and why.
    Silent(String),
}

/// Asks whatever is at `socket` for `GET /_ping` (HTTP over the unix socket), within `limit`,
/// as `tests/setup/dockerd.sh` does with `docker version`. A socket file whose dockerd was
/// killed refuses the connection.
pub fn probe(socket: &Path, limit: Duration) -> Engine {
    if std::fs::symlink_metadata(socket).is_err() {
        return Engine::Missing;
    }
    let mut s = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Engine::Silent(format!("connecting to it failed: {e}")),
    };
    let _ = s.set_read_timeout(Some(limit));
    let _ = s.set_write_timeout(Some(limit));
    if let Err(e) = s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n") {
        return Engine::Silent(format!("sending it a ping failed: {e}"));
    }
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Engine::Silent(format!("no answer to a ping within {limit:?}: {e}"));
            }
        }
    }
    let status = String::from_utf8_lossy(&head[..got]);
    let status = status.lines().next().unwrap_or_default();
    if status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200") {
        Engine::Answers
    } else {
        Engine::Silent(format!("it answered a ping with {status:?}"))
    }
}

/// Why an engine must be started for the tests, or `None` when one answers at `socket`.
pub fn start_reason(socket: &Path, engine: &Engine) -> Option<String> {
    match engine {
        Engine::Answers => None,
        Engine::Missing => Some(format!("{} does not exist", socket.display())),
        Engine::Silent(why) => Some(format!(
            "{} exists but no Docker engine answers on it ({why}); a dockerd that died without removing its socket leaves it so",
            socket.display()
        )),
    }
}

/// The engine only, started when none answers (no test image is built): for tests that build
/// their own images or drive docker-compose. Under `CI=true` an engine that cannot be had fails
/// the test; locally it is skipped loudly (`None`).
pub fn engine() -> Option<()> {
    match ENGINE.get_or_init(start_engine) {
        Ok(()) => Some(()),
        Err(e) => skip_or_fail(&format!("Docker is not usable: {e}")),
    }
}

fn start_engine() -> Result<(), String> {
    if let Err(e) = USER_LOCK.get_or_init(take_user_lock) {
        return Err(e.clone());
    }
    let root = super::repo_root();
    let socket = Path::new(SOCKET);
    if let Some(why) = start_reason(socket, &probe(socket, PING_LIMIT)) {
        eprintln!("[docker] {why}: starting an engine with tests/setup/dockerd.sh");
        let st = Command::new("bash")
            .arg(root.join("tests/setup/dockerd.sh"))
            .arg("start")
            .arg(lock_path())
            .status()
            .map_err(|e| format!("running tests/setup/dockerd.sh: {e}"))?;
        if !st.success() {
            return Err(format!(
                "{why}, and starting dockerd failed (tests/setup/dockerd.sh start: {st}; its log: {STATE_DIR}/dockerd.log); install it with `bash tests/setup/install-deps.sh system`"
            ));
        }
    }
    Ok(())
}

fn prepare() -> Result<(), String> {
    ENGINE.get_or_init(start_engine).clone()?;
    let st = Command::new("bash")
        .arg(super::repo_root().join("tests/docker/build-images.sh"))
        .status()
        .map_err(|e| format!("running tests/docker/build-images.sh: {e}"))?;
    if !st.success() {
        return Err(format!("building the test images failed ({st})"));
    }
    Ok(())
}

/// A connected runtime in a fresh reconciliation scope, or `None` (skip) when Docker is missing.
pub async fn runtime(scope: &str) -> Option<DockerRuntime> {
    if let Err(e) = READY.get_or_init(prepare) {
        return skip_or_fail(&format!("Docker is not usable: {e}")).map(|_| unreachable!());
    }
    match DockerRuntime::connect_scoped(scope).await {
        Ok(rt) => Some(rt),
        Err(e) => skip_or_fail(&format!("Docker is not usable: {e}")).map(|_| unreachable!()),
    }
}

/// How long removing what a test's scope left behind may take.
const SCOPE_CLEANUP: Duration = Duration::from_secs(120);

/// A reconciliation scope unique to one test, so parallel tests never touch each other's
/// containers. Removes whatever is left in it when dropped (the gateway under test is killed
/// with SIGKILL and cannot clean up after itself).
pub struct Scope {
    pub name: String,
}

impl Scope {
    pub fn new(test: &str) -> Scope {
        let mut b = [0u8; 4];
        getrandom::getrandom(&mut b).expect("random");
        Scope {
            name: format!("test-{test}-{}", hex::encode(b)),
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let scope = self.name.clone();
        // Drop may run inside a runtime; do the async work on a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            // Bounded: an engine that stopped answering must not hold a failed test (and CI)
            // for a removal timeout per container left behind.
            let cleanup = async {
                if let Ok(d) = DockerRuntime::connect_scoped(&scope).await {
                    let _ = d.reconcile(|_| false).await;
                }
            };
            // Made inside the runtime: the timer needs its reactor.
            if rt
                .block_on(async { tokio::time::timeout(SCOPE_CLEANUP, cleanup).await })
                .is_err()
            {
                eprintln!(
                    "\n!!!!!!!! the engine did not remove scope {scope} within {SCOPE_CLEANUP:?}: its containers may be left behind !!!!!!!!\n"
                );
            }
        })
        .join();
    }
}

/// Labelled containers of a scope (id -> labels).
pub async fn containers_in(
    rt: &DockerRuntime,
    scope: &str,
) -> HashMap<String, HashMap<String, String>> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters = HashMap::from([("label", vec![format!("io.portcullis.scope={scope}")])]);
    rt.api()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| (c.id.unwrap_or_default(), c.labels.unwrap_or_default()))
        .collect()
}

/// Whether an optional test image exists; a missing one fails under CI and skips loudly locally.
pub async fn require_image(rt: &DockerRuntime, image: &str, how: &str) -> Option<()> {
    match rt.image(image).await {
        Ok(Some(_)) => Some(()),
        Ok(None) => skip_or_fail(&format!("test image {image} is missing: {how}")),
        Err(e) => skip_or_fail(&format!("Docker is not usable: {e}")),
    }
}
