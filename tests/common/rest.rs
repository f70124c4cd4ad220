//! The FastAPI app of tests/python/servers/rest_api.py on 127.0.0.1, for `runtime = "openapi"`,
//! with the log of every request it received.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::remote::free_port;
use super::{peer, repo_root};

/// The REST API process; killed on drop.
pub struct RestApi {
    child: Child,
    pub port: u16,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl RestApi {
    /// Starts the app; `/redirect-away` points at `redirect_target`. `None` (after a loud
    /// message, or a panic under CI) when the peers venv or FastAPI is missing.
    pub fn start(redirect_target: &str) -> Option<RestApi> {
        let python = peer("venv/bin/python")?;
        let has_fastapi = Command::new(&python)
            .args(["-c", "import fastapi, uvicorn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_fastapi {
            let msg = "FastAPI is missing from the peers venv: run `bash tests/setup/install-deps.sh peers`";
            super::skip_or_fail(msg);
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("requests.jsonl");
        let child = Command::new(&python)
            .arg(repo_root().join("tests/python/servers/rest_api.py"))
            .args([
                &port.to_string(),
                &log.display().to_string(),
                redirect_target,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the REST API");
        let api = RestApi {
            child,
            port,
            log,
            dir,
        };
        let start = Instant::now();
        while super::http_get(&format!("{}/openapi.json", api.url()))
            .map_or(true, |(s, _)| s != 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the REST API did not come up on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(api)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The OpenAPI document FastAPI generates, saved to a file.
    pub fn spec_file(&self) -> PathBuf {
        let (status, body) = super::http_get(&format!("{}/openapi.json", self.url())).unwrap();
        assert_eq!(status, 200, "{body}");
        let path = self.dir.path().join("openapi.json");
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Every request the app received (method, path, raw_path, query, headers, body).
    pub fn requests(&self) -> Vec<Value> {
        super::read_jsonl(&self.log)
    }
}

impl Drop for RestApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
