//! `portcullis client-config`: the exact command or JSON that connects a client to the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Client {
    Claude,
    Cursor,
    Vscode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Scope {
    /// Only for you (the client's user settings).
    User,
    /// Checked into the project (`.mcp.json`, `.cursor/mcp.json`, `.vscode/mcp.json`).
    Project,
}

/// Which transport the client uses: Streamable HTTP (`/mcp`) or the deprecated HTTP+SSE one
/// (`/sse`), for clients that only speak the latter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Http,
    Sse,
}

#[derive(Debug, clap::Args)]
pub struct ClientConfigArgs {
    pub client: Client,
    #[arg(long, value_enum, default_value_t = Scope::User)]
    pub scope: Scope,
    #[arg(long, value_enum, default_value_t = Transport::Http)]
    pub transport: Transport,
    /// Policy whose listener to point at; the embedded default otherwise.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The environment variable that will hold the client's bearer token, when the gateway
    /// requires one. The token itself is never printed into configuration.
    #[arg(long, default_value = "PORTCULLIS_TOKEN")]
    pub token_env: String,
    /// The server name clients show.
    #[arg(long, default_value = "portcullis")]
    pub name: String,
    /// Claude Code only: print the managed (enterprise) configuration instead, the two files an
    /// administrator installs in `/etc/claude-code/`: `managed-mcp.json` names only the gateway,
    /// which gives it exclusive control (`claude mcp add` is refused), and
    /// `managed-settings.json` allows only the gateway's URL.
    #[arg(long)]
    pub managed: bool,
    /// The gateway's base URL as the client sees it (`https://portcullis:8811` in the devcontainer
    /// kit), instead of the one derived from the policy's listener.
    #[arg(long)]
    pub base_url: Option<String>,
    /// With `--managed`: write the two files into this directory instead of printing them.
    #[arg(long, requires = "managed")]
    pub out_dir: Option<PathBuf>,
}

/// Where Claude Code reads its managed configuration on Linux (fixed in the CLI).
pub const MANAGED_DIR: &str = "/etc/claude-code";

pub fn run(args: ClientConfigArgs) -> ExitCode {
    let policy = match super::serve::load_policy(args.policy.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let addr = policy.gateway.listen;
    // A wildcard listen address is not something a client can connect to.
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let base = match &args.base_url {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None => base_url(&policy, std::net::SocketAddr::new(host, addr.port())),
    };
    if args.managed {
        return managed(&args, &base, policy.requires_auth());
    }
    print!("{}", render(&args, &base, policy.requires_auth()));
    ExitCode::SUCCESS
}

fn managed(args: &ClientConfigArgs, base: &str, auth: bool) -> ExitCode {
    if !matches!(args.client, Client::Claude) {
        eprintln!("--managed is for Claude Code only (its /etc/claude-code/ files)");
        return ExitCode::FAILURE;
    }
    let auth_env = auth.then_some(args.token_env.as_str());
    let (mcp, settings) = managed_files(&args.name, base, args.transport, auth_env);
    let Some(dir) = &args.out_dir else {
        print!("# {MANAGED_DIR}/managed-mcp.json\n{mcp}");
        print!("\n# {MANAGED_DIR}/managed-settings.json\n{settings}");
        if let Some(env) = auth_env {
            println!("\n# Claude Code expands ${{{env}}} whenever it connects: set {env} in its environment.");
        }
        return ExitCode::SUCCESS;
    };
    for (file, text) in [
        ("managed-mcp.json", &mcp),
        ("managed-settings.json", &settings),
    ] {
        let path = dir.join(file);
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The two managed files for a gateway at `base`: `(managed-mcp.json, managed-settings.json)`.
/// The token stays a `${VAR}` reference, which Claude Code expands in managed-mcp.json as in
/// `.mcp.json`, so the files hold no secret and can be baked into an image.
pub fn managed_files(
    name: &str,
    base: &str,
    transport: Transport,
    auth_env: Option<&str>,
) -> (String, String) {
    let (kind, url) = endpoint(base, transport);
    let mut server = json!({"type": kind, "url": url});
    if let Some(env) = auth_env {
        server["headers"] = json!({"Authorization": format!("Bearer ${{{env}}}")});
    }
    let mcp = json!({"mcpServers": {name: server}});
    // `serverUrl` is matched against a remote server's URL (wildcards allowed); naming the exact
    // endpoint means a server that merely reuses the name `portcullis` elsewhere is not allowed.
    let settings = json!({"allowedMcpServers": [{"serverUrl": url}]});
    (pretty(&mcp), pretty(&settings))
}

/// `http://HOST:PORT` (or `https`) of a gateway listening on `addr` with `policy`.
pub fn base_url(policy: &crate::policy::Policy, addr: std::net::SocketAddr) -> String {
    let scheme = if policy.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// The `claude mcp add` command line for a gateway at `base`. The name and URL come before
/// `--header`, whose argument list is variadic in Claude Code and would otherwise swallow them;
/// the header is single-quoted so that the shell leaves `${VAR}` alone and Claude Code expands
/// it each time it connects, so the token never lands in its configuration file.
pub fn claude_command(
    name: &str,
    base: &str,
    transport: Transport,
    scope: Scope,
    auth_env: Option<&str>,
) -> String {
    let (kind, url) = endpoint(base, transport);
    let scope = match scope {
        Scope::User => "user",
        Scope::Project => "project",
    };
    let mut line = format!(
        "claude mcp add --transport {kind} --scope {scope} {} {}",
        shell_word(name),
        shell_word(&url)
    );
    if let Some(env) = auth_env {
        line.push_str(&format!(" --header 'Authorization: Bearer ${{{env}}}'"));
    }
    line
}

fn endpoint(base: &str, transport: Transport) -> (&'static str, String) {
    match transport {
        Transport::Http => ("http", format!("{base}/mcp")),
        Transport::Sse => ("sse", format!("{base}/sse")),
    }
}

/// Quotes `s` for a POSIX shell when it holds anything but plain characters.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn render(args: &ClientConfigArgs, base: &str, auth: bool) -> String {
    let name = &args.name;
    let env = &args.token_env;
    let (kind, url) = endpoint(base, args.transport);
    match args.client {
        Client::Claude => {
            let mut out = claude_command(
                name,
                base,
                args.transport,
                args.scope,
                auth.then_some(env.as_str()),
            );
            out.push('\n');
            if matches!(args.scope, Scope::Project) {
                let mut server = json!({"type": kind, "url": url});
                if auth {
                    server["headers"] = json!({"Authorization": format!("Bearer ${{{env}}}")});
                }
                let doc = json!({"mcpServers": {name.as_str(): server}});
                out.push_str("\n# or commit this as .mcp.json in the project root:\n");
                out.push_str(&pretty(&doc));
            }
            if auth {
                out.push_str(&format!(
                    "\n# Claude Code reads the token from ${env} whenever it connects: export {env}=<your token> before starting it.\n"
                ));
            }
            out
        }
        Client::Cursor => {
            let mut server = json!({"url": url});
            if auth {
                server["headers"] = json!({"Authorization": format!("Bearer ${{env:{env}}}")});
            }
            let file = match args.scope {
                Scope::User => "~/.cursor/mcp.json",
                Scope::Project => ".cursor/mcp.json",
            };
            format!(
                "# {file}\n{}",
                pretty(&json!({"mcpServers": {name.as_str(): server}}))
            )
        }
        Client::Vscode => {
            let mut server = json!({"type": kind, "url": url});
            let mut doc = json!({"servers": {}});
            if auth {
                server["headers"] = json!({"Authorization": "Bearer ${input:portcullis-token}"});
                doc["inputs"] = json!([{
                    "type": "promptString",
                    "id": "portcullis-token",
                    "description": "Portcullis client token",
                    "password": true
                }]);
            }
            doc["servers"][name.as_str()] = server;
            let file = match args.scope {
                Scope::User => "VS Code user settings: MCP: Open User Configuration",
                Scope::Project => ".vscode/mcp.json",
            };
            format!("# {file}\n{}", pretty(&doc))
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(client: Client, scope: Scope) -> ClientConfigArgs {
        ClientConfigArgs {
            client,
            scope,
            policy: None,
            transport: Transport::Http,
            token_env: "PORTCULLIS_TOKEN".into(),
            name: "portcullis".into(),
            managed: false,
            base_url: None,
            out_dir: None,
        }
    }

    #[test]
    fn managed_files_name_only_the_gateway_and_keep_the_token_a_reference() {
        let (mcp, settings) = managed_files(
            "portcullis",
            "http://127.0.0.1:8811",
            Transport::Http,
            Some("PORTCULLIS_TOKEN"),
        );
        let mcp: serde_json::Value = serde_json::from_str(&mcp).unwrap();
        let servers = mcp["mcpServers"].as_object().unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers["portcullis"]["url"], "http://127.0.0.1:8811/mcp");
        assert_eq!(
            servers["portcullis"]["headers"]["Authorization"],
            "Bearer ${PORTCULLIS_TOKEN}"
        );
        let settings: serde_json::Value = serde_json::from_str(&settings).unwrap();
        assert_eq!(
            settings,
            json!({"allowedMcpServers": [{"serverUrl": "http://127.0.0.1:8811/mcp"}]})
        );
    }

    #[test]
    fn claude_line_and_project_json() {
        let out = render(
            &args(Client::Claude, Scope::User),
            "http://127.0.0.1:8811",
            false,
        );
        assert_eq!(
            out,
            "claude mcp add --transport http --scope user portcullis http://127.0.0.1:8811/mcp\n"
        );
        let out = render(
            &args(Client::Claude, Scope::Project),
            "http://127.0.0.1:8811",
            true,
        );
        assert!(out.starts_with("claude mcp add --transport http --scope project portcullis http://127.0.0.1:8811/mcp --header 'Authorization: Bearer ${PORTCULLIS_TOKEN}'\n"), "{out}");
        let json_part = &out[out.find("\n{").unwrap() + 1..out.rfind("}\n").unwrap() + 1];
        let v: serde_json::Value = serde_json::from_str(json_part).unwrap();
        assert_eq!(v["mcpServers"]["portcullis"]["type"], "http");
        assert_eq!(
            v["mcpServers"]["portcullis"]["headers"]["Authorization"],
            "Bearer ${PORTCULLIS_TOKEN}"
        );
    }

    #[test]
    fn sse_transport_and_odd_names_are_quoted() {
        let line = claude_command(
            "my gw",
            "http://127.0.0.1:9",
            Transport::Sse,
            Scope::User,
            Some("TOK"),
        );
        assert_eq!(
            line,
            "claude mcp add --transport sse --scope user 'my gw' http://127.0.0.1:9/sse --header 'Authorization: Bearer ${TOK}'"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn cursor_and_vscode_documents_parse() {
        for c in [Client::Cursor, Client::Vscode] {
            let out = render(&args(c, Scope::Project), "https://127.0.0.1:8811", true);
            let json_part = &out[out.find("\n{").unwrap() + 1..];
            let v: serde_json::Value = serde_json::from_str(json_part).unwrap();
            assert!(v.to_string().contains("https://127.0.0.1:8811/mcp"), "{v}");
            assert!(v.to_string().contains("Authorization"), "{v}");
        }
    }
}
