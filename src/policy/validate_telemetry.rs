//! Validation of `[telemetry]`: the OTLP collector the gateway exports trace spans to.

use std::time::Duration;

use super::model::*;
use super::raw::*;
use super::validate::{is_loopback_url, parse_secret_ref, Checker};

/// Spans waiting for export by default; at ~1 KiB each, a bounded few MiB.
const DEFAULT_QUEUE: usize = 4096;
const MAX_QUEUE: u64 = 1 << 20;

impl Checker<'_> {
    pub(super) fn telemetry(&mut self, t: RawTelemetry) -> Option<Telemetry> {
        let endpoint = match &t.endpoint {
            Some(e) => {
                let url = e.get_ref().trim().to_owned();
                // https: TLS with verification always on (src/telemetry/connector.rs).
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                if !scheme_ok || url.parse::<http::Uri>().is_err() {
                    self.error(
                        e.span().start,
                        format!("telemetry `endpoint` \"{url}\" is not an http:// or https:// URL, like \"http://127.0.0.1:4318\""),
                    );
                    return None;
                }
                url
            }
            None => {
                self.error(0, "[telemetry] needs `endpoint`, the OTLP collector's URL (like \"http://127.0.0.1:4318\" for OTLP/HTTP)");
                return None;
            }
        };
        let ca_file = match &t.ca_file {
            Some(p) if !endpoint.starts_with("https://") => {
                // A CA for a connection that has no TLS would be ignored: say so.
                self.error(
                    p.span().start,
                    format!(
                        "telemetry `ca_file` needs an https:// `endpoint` (it is \"{endpoint}\")"
                    ),
                );
                None
            }
            Some(p) => Some(self.resolve(p.get_ref())),
            None => None,
        };
        let protocol = match &t.protocol {
            None => OtlpProtocol::HttpProtobuf,
            Some(p) => match p.get_ref().as_str() {
                "http/protobuf" | "http" => OtlpProtocol::HttpProtobuf,
                "grpc" => OtlpProtocol::Grpc,
                other => {
                    self.error(
                        p.span().start,
                        format!("unknown telemetry protocol \"{other}\"; use \"http/protobuf\" (default) or \"grpc\""),
                    );
                    OtlpProtocol::HttpProtobuf
                }
            },
        };
        let mut headers = Vec::new();
        if let Some(h) = &t.headers {
            for (name, value) in h.get_ref() {
                let at = value.span().start;
                if name.parse::<http::HeaderName>().is_err() {
                    self.error(
                        at,
                        format!("telemetry header name `{name}` is not a valid HTTP header name"),
                    );
                    continue;
                }
                let v = value.get_ref();
                // A value that names a secret source is a secret; anything else is written as is.
                let secret_like = ["env:", "file:", "dotenv:"]
                    .iter()
                    .any(|p| v.starts_with(p));
                if secret_like && endpoint.starts_with("http://") && !is_loopback_url(&endpoint) {
                    // As with an http sink's HEC token: a secret never crosses a network in clear.
                    self.error(
                        at,
                        format!("telemetry header `{name}` holds a secret, and the endpoint \"{endpoint}\" is plain http to a host that is not this machine: the secret would cross the network in clear; use an https:// endpoint (`ca_file` trusts a private CA), or a collector on 127.0.0.1"),
                    );
                    continue;
                }
                if secret_like {
                    match parse_secret_ref(v) {
                        Ok(r) => headers.push((name.clone(), HeaderValue::Secret(r))),
                        Err(e) => self.error(at, format!("telemetry header `{name}`: {e}")),
                    }
                } else {
                    headers.push((name.clone(), HeaderValue::Literal(v.clone())));
                }
            }
        }
        let sampling = match &t.sampling {
            None => 1.0,
            Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                self.error(
                    s.span().start,
                    "telemetry `sampling` is the share of traces kept, from 0.0 to 1.0",
                );
                1.0
            }
        };
        let service_name = match &t.service_name {
            Some(n) if n.get_ref().trim().is_empty() => {
                self.error(n.span().start, "telemetry `service_name` is empty");
                "portcullis".to_owned()
            }
            Some(n) => n.get_ref().clone(),
            None => "portcullis".to_owned(),
        };
        let timeout = self
            .duration(&t.timeout, "timeout")
            .unwrap_or(Duration::from_secs(5));
        let queue = match &t.queue {
            None => DEFAULT_QUEUE,
            Some(q) if (1..=MAX_QUEUE).contains(q.get_ref()) => {
                usize::try_from(*q.get_ref()).unwrap_or(DEFAULT_QUEUE)
            }
            Some(q) => {
                self.error(
                    q.span().start,
                    format!("telemetry `queue` must be from 1 to {MAX_QUEUE} spans"),
                );
                DEFAULT_QUEUE
            }
        };
        Some(Telemetry {
            endpoint,
            protocol,
            ca_file,
            headers,
            sampling,
            service_name,
            timeout,
            queue,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::model::{HeaderValue, OtlpProtocol, SecretRef};
    use crate::policy::parse;

    fn errors(src: &str) -> String {
        match parse(src, "p.toml") {
            Ok(p) => panic!("accepted: {:?}", p.telemetry),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn telemetry_is_read_with_secret_headers_and_bad_values_are_located() {
        let p = parse(
            "[telemetry]\nendpoint = \"http://127.0.0.1:4317\"\nprotocol = \"grpc\"\nheaders = { Authorization = \"env:OTLP_AUTH\", x-tenant = \"team-a\" }\nsampling = 0.25\n",
            "p.toml",
        )
        .unwrap();
        let t = p.telemetry.unwrap();
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.sampling, 0.25);
        assert_eq!(t.service_name, "portcullis");
        assert!(t.headers.contains(&(
            "Authorization".into(),
            HeaderValue::Secret(SecretRef::Env("OTLP_AUTH".into()))
        )));
        assert!(t
            .headers
            .contains(&("x-tenant".into(), HeaderValue::Literal("team-a".into()))));
        assert!(parse("", "p.toml").unwrap().telemetry.is_none());
        let e = errors("[telemetry]\nendpoint = \"http://c:4318\"\nsampling = 2.0\n");
        assert!(e.contains("p.toml:3") && e.contains("0.0 to 1.0"), "{e}");
        let t = parse(
            "[telemetry]\nendpoint = \"https://cloud.langfuse.com/api/public/otel\"\nca_file = \"ca.pem\"\n",
            "/etc/pc/p.toml",
        )
        .unwrap()
        .telemetry
        .unwrap();
        // `parse` has no base folder; `load` resolves a relative path against the policy's.
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("ca.pem")));
        let e = errors("[telemetry]\nendpoint = \"http://c:4318\"\nca_file = \"ca.pem\"\n");
        assert!(e.contains("`ca_file` needs an https://"), "{e}");
        let e = errors("[telemetry]\nendpoint = \"ftp://c:4318\"\n");
        assert!(e.contains("not an http:// or https:// URL"), "{e}");
        let e = errors("[telemetry]\nendpoint = \"http://c:4318\"\nprotocol = \"udp\"\n");
        assert!(e.contains("unknown telemetry protocol"), "{e}");
        let e = errors("[telemetry]\nsampling = 1.0\n");
        assert!(e.contains("needs `endpoint`"), "{e}");
        let e = errors(
            "[telemetry]\nendpoint = \"http://127.0.0.1:4318\"\nheaders = { A = \"env:not a name\" }\n",
        );
        assert!(e.contains("telemetry header `A`"), "{e}");
    }

    #[test]
    fn a_secret_header_never_goes_to_a_remote_collector_over_plain_http() {
        let e = errors(
            "[telemetry]\nendpoint = \"http://langfuse-web:3000/api/public/otel\"\nheaders = { Authorization = \"env:LANGFUSE_OTEL_AUTH\" }\n",
        );
        assert!(
            e.contains("p.toml:3")
                && e.contains("`Authorization` holds a secret")
                && e.contains("use an https:// endpoint"),
            "{e}"
        );
        // Over TLS, to this machine, or a literal value: accepted.
        for ok in [
            "endpoint = \"https://langfuse-web:3000/api/public/otel\"\nheaders = { Authorization = \"env:A\" }",
            "endpoint = \"http://127.0.0.1:4318\"\nheaders = { Authorization = \"env:A\" }",
            "endpoint = \"http://[::1]:4318\"\nheaders = { Authorization = \"env:A\" }",
            "endpoint = \"http://collector:4318\"\nheaders = { x-tenant = \"team-a\" }",
        ] {
            let src = format!("[telemetry]\n{ok}\n");
            assert!(parse(&src, "p.toml").is_ok(), "{src}");
        }
    }
}
