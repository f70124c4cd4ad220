//! What the devcontainer kit's privileged tests share (`workspace_egress.rs` runs the kit's
//! containers with `docker run`, `devcontainer_compose.rs` with the kit's own compose file):
//! the images built from the binary under test, the probe a process inside the workspace runs,
//! the gateway's certificate, and Claude Code's `mcp list` with its telemetry off.

use std::path::Path;
use std::process::{Command, Output};

/// The gateway image (also the egress agent's) built from the binary under test.
pub const AGENT_IMAGE: &str = "portcullis/gateway:workspace-test";
/// The kit's workspace image assembled offline (`tests/docker/workspace-image.sh`).
pub const WORKSPACE_IMAGE: &str = "portcullis/workspace:test";

/// What a process inside the workspace tries; prints one line (`connected …`, `resolved …`,
/// `status N`, or `failed …`).
pub const PROBE: &str = r#"
const net=require('net'),dns=require('dns'),https=require('https'),fs=require('fs');
const [op,x,y]=process.argv.slice(1);
const done=(s)=>{console.log(s);process.exit(0)};
setTimeout(()=>done('failed timeout'),3000);
function tcp(host,port){const s=net.connect({host,port:+port});s.setEncoding('utf8');let got='';
 s.on('connect',()=>setTimeout(()=>done('connected '+host+' banner='+got.trim()),300));
 s.on('data',d=>{got+=d});s.on('error',e=>done('failed '+e.code));}
if(op==='tcp')tcp(x,y);
else if(op==='resolve_connect')dns.lookup(x,{family:4},(e,a)=>e?done('failed dns '+e.code):tcp(a,y));
else if(op==='dns'){const r=new dns.Resolver({timeout:1000,tries:1});r.setServers([x]);
 r.resolve4(y,(e,a)=>done(e?'failed '+e.code:'answered '+a));}
else if(op==='mcp'){const body=JSON.stringify({jsonrpc:'2.0',id:1,method:'initialize',params:{protocolVersion:'2025-06-18',capabilities:{},clientInfo:{name:'ws',version:'0'}}});
 const q=https.request(x,{method:'POST',ca:fs.readFileSync('/etc/portcullis/tls/ca.crt'),headers:{'content-type':'application/json',accept:'application/json, text/event-stream',authorization:'Bearer '+y}},
  r=>{let b='';r.on('data',d=>b+=d);r.on('end',()=>done('status '+r.statusCode+' '+b.slice(0,200).replace(/\n/g,' ')))});
 q.on('error',e=>done('failed '+e.code));q.end(body);}
"#;

/// The CLI's environment in every test that runs it: no telemetry, no update check, no error
/// reports (the lab would swallow them, but the test must not even try).
pub const CLAUDE_QUIET_ENV: [&str; 4] = [
    "DISABLE_TELEMETRY=1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
    "DISABLE_AUTOUPDATER=1",
    "DISABLE_ERROR_REPORTING=1",
];

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// `docker ARGS`, which must succeed; its trimmed stdout.
pub fn must(args: &[&str]) -> String {
    let o = docker(args);
    assert!(o.status.success(), "docker {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Builds [`AGENT_IMAGE`] and [`WORKSPACE_IMAGE`] offline from the binary under test.
pub fn build_images() {
    let root = super::repo_root();
    for (script, tag) in [
        ("tests/docker/build-gateway-image.sh", AGENT_IMAGE),
        ("tests/docker/workspace-image.sh", WORKSPACE_IMAGE),
    ] {
        let out = Command::new("bash")
            .arg(root.join(script))
            .arg(tag)
            .env("PORTCULLIS_GATEWAY_BIN", super::gateway_bin())
            .output()
            .expect(script);
        assert!(out.status.success(), "{script}: {}", text(&out));
    }
}

/// The gateway's certificate in `dir`: a test CA (`ca.crt`, what clients trust) and a leaf
/// signed by it for `san` (`IP:…` or `DNS:…`; `gateway.crt`, `gateway.key`), as a deployment
/// has them. Not one self-signed certificate for both: rustls (the gateway's own `health
/// --ca` probe) refuses a CA certificate presented as the server's.
pub fn make_cert(dir: &Path, san: &str) {
    let d = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=portcullis test CA"],
        ]
        .concat()
        .into_iter()
        .chain(["-keyout", &d("ca.key"), "-out", &d("ca.crt")])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[&["req"][..], &ec, &["-subj", "/CN=portcullis"]]
            .concat()
            .into_iter()
            .chain(["-keyout", &d("gateway.key"), "-out", &d("gateway.csr")])
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &d("gateway.csr"),
        "-CA",
        &d("ca.crt"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &d("leaf.ext"),
        "-out",
        &d("gateway.crt"),
    ]);
    // The CA's key is not needed again; the gateway's TLS folder holds only what it uses.
    for f in ["ca.key", "gateway.csr", "leaf.ext", "ca.srl"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// `claude mcp list`'s server rows (`name: url (http) - status`) from its output.
pub fn mcp_rows(listed: &str) -> Vec<&str> {
    listed.lines().filter(|l| l.contains(": http")).collect()
}

/// Only the gateway (`portcullis`), Connected.
pub fn only_the_gateway_connected(listed: &str) -> bool {
    let rows = mcp_rows(listed);
    rows.len() == 1 && rows[0].starts_with("portcullis:") && rows[0].contains("Connected")
}
