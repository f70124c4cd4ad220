//! A compose project of the repository's compose.yaml for tests: the gateway image built offline
//! from the binary under test, a test's policy baked into an image of its own (as a deployment
//! bakes its reviewed policy), `docker-compose` under a unique project name in a directory of the
//! test's own, and everything torn down on drop.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{gateway_bin, repo_root};

pub const GATEWAY_IMAGE: &str = "portcullis/gateway:test";
/// Image pull-free start, first healthcheck after `interval` (5 s): generous for a loaded CI box.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(180);

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn free_loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// One compose project: the repository's compose.yaml, run from a project directory holding the
/// test's `.env` and policy. `down -v` runs on drop if the test did not get that far.
pub struct Project {
    pub name: String,
    pub dir: tempfile::TempDir,
    down: bool,
    /// Merge compose.signed.yaml over compose.yaml.
    pub signed: bool,
    /// Images built for this project, removed with it.
    pub images: Vec<String>,
}

impl Project {
    pub fn new(signed: bool) -> Project {
        let mut rnd = [0u8; 4];
        getrandom::getrandom(&mut rnd).expect("random");
        Project {
            name: format!("pccompose{}", hex::encode(rnd)),
            dir: tempfile::tempdir().expect("tempdir"),
            down: false,
            signed,
            images: Vec::new(),
        }
    }

    pub fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(repo_root().join("compose.yaml"));
        if self.signed {
            c.arg("--file").arg(repo_root().join("compose.signed.yaml"));
        }
        c.arg("--project-directory")
            .arg(self.dir.path())
            .args(["--ansi", "never"]);
        c
    }

    pub fn container(&self) -> String {
        let id = stdout(&run(self.compose().args(["ps", "-q", "portcullis"])));
        assert!(
            !id.is_empty(),
            "no portcullis container in project {}",
            self.name
        );
        id
    }

    pub fn logs(&self) -> String {
        self.compose()
            .args(["logs", "--no-color", "portcullis"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    pub fn down(&mut self) {
        self.down = true;
        run(self
            .compose()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "30"]));
        for image in self.images.drain(..) {
            run(Command::new("docker").args(["rmi", &image]));
        }
    }

    /// `portcullis doctor` in the gateway's container: whether it passed, and its report.
    pub fn doctor(&self) -> (bool, String) {
        let out = self
            .compose()
            .args(["exec", "-T", "portcullis", "portcullis", "doctor"])
            .output()
            .expect("run doctor in the container");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    }

    /// Objects of this project still on the engine, by kind.
    pub fn leftovers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &filter]),
            ("network", vec!["network", "ls", "-q", "--filter", &filter]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &filter]),
        ] {
            let ids = stdout(&run(Command::new("docker").args(&args)));
            left.extend(ids.lines().map(|id| format!("{kind} {id}")));
        }
        left
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            eprintln!("--- gateway logs ---\n{}", self.logs());
            let _ = self
                .compose()
                .args(["down", "--volumes", "--remove-orphans", "--timeout", "10"])
                .output();
            for image in &self.images {
                let _ = Command::new("docker").args(["rmi", image]).output();
            }
        }
    }
}

pub fn docker_compose_present() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Once per test process: the tests here run in parallel and share the tag.
pub fn build_gateway_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        run(Command::new("bash")
            .arg(repo_root().join("tests/docker/build-gateway-image.sh"))
            .arg(GATEWAY_IMAGE)
            .env("PORTCULLIS_GATEWAY_BIN", gateway_bin()));
    });
}

/// The gateway image with `policy` baked in at /etc/portcullis/policy.toml, as a deployment
/// builds it from its reviewed policy: tagged `tag`.
pub fn bake_policy_image(policy: &Path, tag: &str) {
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::copy(policy, ctx.path().join("policy.toml")).expect("copy policy");
    std::fs::set_permissions(
        ctx.path().join("policy.toml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {GATEWAY_IMAGE}\nCOPY policy.toml /etc/portcullis/policy.toml\n"),
    )
    .expect("write Dockerfile");
    run(Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0"));
}

/// Waits until the gateway's log holds `needle` `times` times.
pub fn logged(project: &Project, needle: &str, times: usize) {
    let start = Instant::now();
    while project.logs().matches(needle).count() < times {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "`{needle}` not logged {times}x:\n{}",
            project.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn health_of(container: &str) -> String {
    stdout(&run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.Health.Status}}",
        container,
    ])))
}

pub fn wait_healthy(project: &Project, container: &str) {
    let start = Instant::now();
    loop {
        match health_of(container).as_str() {
            "healthy" => return,
            "unhealthy" => panic!(
                "the gateway's healthcheck says unhealthy:\n{}",
                project.logs()
            ),
            _ => {}
        }
        if start.elapsed() > HEALTHY_WITHIN {
            panic!("not healthy after {HEALTHY_WITHIN:?}:\n{}", project.logs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
