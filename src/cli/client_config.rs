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

#[derive(Debug, clap::Args)]
pub struct ClientConfigArgs {
    pub client: Client,
    #[arg(long, value_enum, default_value_t = Scope::User)]
    pub scope: Scope,
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
}

pub fn run(args: ClientConfigArgs) -> ExitCode {
    let policy = match super::serve::load_policy(args.policy.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if policy.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = policy.gateway.listen;
    // A wildcard listen address is not something a client can connect to.
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let url = format!("{scheme}://{host}:{}/mcp", addr.port());
    let auth = policy.requires_auth();
    print!("{}", render(&args, &url, auth));
    ExitCode::SUCCESS
}

fn render(args: &ClientConfigArgs, url: &str, auth: bool) -> String {
    let name = &args.name;
    let env = &args.token_env;
    match args.client {
        Client::Claude => {
            let scope = match args.scope {
                Scope::User => "user",
                Scope::Project => "project",
            };
            let header = if auth {
                format!(" --header \"Authorization: Bearer ${{{env}}}\"")
            } else {
                String::new()
            };
            let mut out =
                format!("claude mcp add --transport http --scope {scope}{header} {name} {url}\n");
            if matches!(args.scope, Scope::Project) {
                let mut server = json!({"type": "http", "url": url});
                if auth {
                    server["headers"] = json!({"Authorization": format!("Bearer ${{{env}}}")});
                }
                let doc = json!({"mcpServers": {name.as_str(): server}});
                out.push_str("\n# or commit this as .mcp.json in the project root:\n");
                out.push_str(&pretty(&doc));
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
            let mut server = json!({"type": "http", "url": url});
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
            token_env: "PORTCULLIS_TOKEN".into(),
            name: "portcullis".into(),
        }
    }

    #[test]
    fn claude_line_and_project_json() {
        let out = render(
            &args(Client::Claude, Scope::User),
            "http://127.0.0.1:8811/mcp",
            false,
        );
        assert_eq!(
            out,
            "claude mcp add --transport http --scope user portcullis http://127.0.0.1:8811/mcp\n"
        );
        let out = render(
            &args(Client::Claude, Scope::Project),
            "http://127.0.0.1:8811/mcp",
            true,
        );
        assert!(out.starts_with("claude mcp add --transport http --scope project --header \"Authorization: Bearer ${PORTCULLIS_TOKEN}\" portcullis"), "{out}");
        let json_part = &out[out.find("\n{").unwrap() + 1..];
        let v: serde_json::Value = serde_json::from_str(json_part).unwrap();
        assert_eq!(v["mcpServers"]["portcullis"]["type"], "http");
        assert_eq!(
            v["mcpServers"]["portcullis"]["headers"]["Authorization"],
            "Bearer ${PORTCULLIS_TOKEN}"
        );
    }

    #[test]
    fn cursor_and_vscode_documents_parse() {
        for c in [Client::Cursor, Client::Vscode] {
            let out = render(&args(c, Scope::Project), "https://127.0.0.1:8811/mcp", true);
            let json_part = &out[out.find("\n{").unwrap() + 1..];
            let v: serde_json::Value = serde_json::from_str(json_part).unwrap();
            assert!(v.to_string().contains("https://127.0.0.1:8811/mcp"), "{v}");
            assert!(v.to_string().contains("Authorization"), "{v}");
        }
    }
}
