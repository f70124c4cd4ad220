//! The peer gateways measured in the same run, each started here on loopback only:
//!
//! - IBM ContextForge (`mcp-contextforge-gateway`, PyPI) fronting the echo upstream over
//!   Streamable HTTP: the same upstream as Portcullis's scenario (b). Everything that could
//!   reach beyond this machine is switched off (UI, admin API, A2A, LLM chat, plugins, SSO,
//!   OAuth discovery, observability exporters, catalog health checks), its database is a SQLite
//!   file in the run's temporary folder, its cache is in memory, and its rate limiter is off.
//!   Its own auth stays on: calls carry an admin JWT minted with its own tool.
//! - `supergateway` (npm) fronting the fixture server over stdio, stateful (one server process
//!   per session, which is how it keeps MCP sessions): the same upstream as scenario (c).
//!
//! Both are installed by `bench/setup-peers.sh` into `.peers/`; a missing peer is reported with
//! the reason and its ratio left out, never guessed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::procs::{free_port, tail, wait_port, Proc};

fn peers_dir() -> PathBuf {
    super::common::repo_root().join(".peers")
}

fn missing(what: &str, path: &Path) -> String {
    format!(
        "{what} is not installed ({} missing): run `bash bench/setup-peers.sh`",
        path.display()
    )
}

/// A running peer and where to send the load.
pub struct Peer {
    pub proc: Proc,
    pub url: String,
    pub tool: String,
    pub bearer: Option<String>,
    pub version: String,
}

/// ContextForge's platform admin, whose token registers the upstream and makes the calls.
const ADMIN: &str = "admin@example.com";

fn random_secret() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::getrandom(&mut b);
    // Mixed alphabet: ContextForge rejects secrets it scores as low-entropy.
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
}

fn pip_version(venv: &Path, package: &str) -> String {
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn wait_http(p: &mut Proc, url: &str, limit: Duration, log: &Path) -> Result<(), String> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        p.alive()
            .map_err(|e| format!("{e}; its log ends with:\n{}", tail(log, 15)))?;
        if start.elapsed() > limit {
            return Err(format!(
                "{} not healthy at {url} after {}s; its log ends with:\n{}",
                p.name,
                limit.as_secs(),
                tail(log, 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts ContextForge with `workers` uvicorn workers, registers `upstream` as a Streamable HTTP
/// gateway and returns its MCP endpoint with the echo tool's name as ContextForge exposes it.
pub async fn contextforge(dir: &Path, upstream: &str, workers: usize) -> Result<Peer, String> {
    let venv = peers_dir().join("bench-venv");
    let bin = venv.join("bin/mcpgateway");
    if !bin.exists() {
        return Err(missing("ContextForge (mcp-contextforge-gateway)", &bin));
    }
    let home = dir.join("contextforge");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let port = free_port();
    let secret = random_secret();
    let password = format!("Bench-{}-9x", &random_secret()[..20]);
    let mut cmd = Command::new(&bin);
    cmd.current_dir(&home)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", venv.join("bin").display()),
        )
        .env("HOME", &home)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env(
            "DATABASE_URL",
            format!("sqlite:///{}", home.join("mcp.db").display()),
        )
        .env("CACHE_TYPE", "memory")
        .env("PLATFORM_ADMIN_EMAIL", ADMIN)
        .env("JWT_SECRET_KEY", &secret)
        .env("AUTH_ENCRYPTION_SECRET", &secret)
        .env("PLATFORM_ADMIN_PASSWORD", &password)
        .env("BASIC_AUTH_PASSWORD", &password)
        .env("MCPGATEWAY_UI_ENABLED", "false")
        .env("MCPGATEWAY_ADMIN_API_ENABLED", "false")
        .env("MCPGATEWAY_A2A_ENABLED", "false")
        .env("MCPGATEWAY_CATALOG_AUTO_HEALTH_CHECK", "false")
        .env("LLMCHAT_ENABLED", "false")
        .env("PLUGINS_ENABLED", "false")
        .env("OTEL_ENABLE_OBSERVABILITY", "false")
        .env("OBSERVABILITY_ENABLED", "false")
        .env("SSO_ENABLED", "false")
        .env("OAUTH_DISCOVERY_ENABLED", "false")
        // Its per-client rate limiter (100 MCP requests a minute by default) would measure
        // the limit, not the gateway: off, like Portcullis runs without [rate] in the policy.
        .env("RATE_LIMITING_ENABLED", "false")
        // Registering an upstream on 127.0.0.1 needs the SSRF guard to allow loopback.
        .env("SSRF_ALLOW_LOCALHOST", "true")
        .env("LOG_LEVEL", "ERROR")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            &workers.to_string(),
        ]);
    let log = dir.join("contextforge.log");
    let mut proc = Proc::spawn("ContextForge", cmd, &log)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(
        &mut proc,
        &format!("{base}/health"),
        Duration::from_secs(180),
        &log,
    )
    .await?;
    // Its REST API and MCP endpoint want a bearer token: one for the platform admin, signed
    // with this run's secret by ContextForge's own tool.
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "mcpgateway.utils.create_jwt_token",
            "-u",
            ADMIN,
            "--admin",
        ])
        .args(["--exp", "120", "-s", &secret])
        .current_dir(&home)
        .env_clear()
        .env("HOME", &home)
        .env("JWT_SECRET_KEY", &secret)
        .env("AUTH_ENCRYPTION_SECRET", &secret)
        .output()
        .map_err(|e| format!("ContextForge create_jwt_token: {e}"))?;
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned();
    if !out.status.success() || token.split('.').count() != 3 {
        return Err(format!(
            "ContextForge create_jwt_token gave no token: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/gateways"))
        .bearer_auth(&token)
        .json(&json!({"name": "echo", "url": upstream, "transport": "STREAMABLEHTTP"}))
        .send()
        .await
        .map_err(|e| format!("ContextForge POST /gateways: {e}"))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "ContextForge refused to register the echo upstream: HTTP {status}: {text}"
        ));
    }
    let tools: Value = http
        .get(format!("{base}/tools"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| format!("ContextForge GET /tools: {e}"))?
        .json()
        .await
        .map_err(|e| format!("ContextForge GET /tools: {e}"))?;
    let list = tools
        .as_array()
        .or_else(|| tools.get("items").and_then(Value::as_array))
        .cloned()
        .unwrap_or_default();
    let tool = list
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .find(|n| n.ends_with("echo"))
        .ok_or_else(|| format!("ContextForge lists no echo tool after registration: {tools}"))?
        .to_owned();
    Ok(Peer {
        proc,
        url: format!("{base}/mcp/"),
        tool,
        bearer: Some(token),
        version: pip_version(&venv, "mcp-contextforge-gateway"),
    })
}

/// Starts supergateway (stateful Streamable HTTP) in front of `command` over stdio.
pub async fn supergateway(dir: &Path, command: &Path) -> Result<Peer, String> {
    let node_dir = peers_dir().join("bench-node");
    let js = node_dir.join("node_modules/supergateway/dist/index.js");
    if !js.exists() {
        return Err(missing("supergateway", &js));
    }
    let version = std::fs::read_to_string(node_dir.join("node_modules/supergateway/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let port = free_port();
    // supergateway listens on every interface; the preload pins it to 127.0.0.1.
    let preload = super::common::repo_root().join("tests/remote/loopback-only.cjs");
    let mut cmd = Command::new("node");
    cmd.arg("--require")
        .arg(&preload)
        .arg(&js)
        .args(["--stdio", &command.display().to_string()])
        .args(["--outputTransport", "streamableHttp", "--stateful"])
        .args(["--port", &port.to_string(), "--logLevel", "none"]);
    let log = dir.join("supergateway.log");
    let mut proc = Proc::spawn("supergateway", cmd, &log)?;
    wait_port(&mut proc, port, Duration::from_secs(60))
        .map_err(|e| format!("{e}; its log ends with:\n{}", tail(&log, 15)))?;
    Ok(Peer {
        proc,
        url: format!("http://127.0.0.1:{port}/mcp"),
        tool: "echo".to_owned(),
        bearer: None,
        version,
    })
}
