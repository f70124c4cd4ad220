//! `[telemetry]` in `portcullis policy show`: where spans go and how, with header secrets as
//! their references and literal credentials hidden (`show` output gets pasted into tickets).

use std::fmt::Write as _;

use super::model::{HeaderValue, OtlpProtocol, SecretRef, Telemetry};
use super::show::header_for_display;

pub(super) fn lines(o: &mut String, t: &Telemetry) {
    let _ = writeln!(
        o,
        "\n[telemetry]  (OpenTelemetry traces; applied again on reload)"
    );
    let _ = writeln!(o, "  endpoint              {}", t.endpoint);
    let protocol = match t.protocol {
        OtlpProtocol::HttpProtobuf => "http/protobuf",
        OtlpProtocol::Grpc => "grpc",
    };
    let _ = writeln!(o, "  protocol              {protocol}");
    let tls = if !t.endpoint.starts_with("https://") {
        "none (plain http)".to_owned()
    } else {
        match &t.ca_file {
            Some(ca) => format!("verified against {} only", ca.display()),
            None => "verified against the system's trust store".to_owned(),
        }
    };
    let _ = writeln!(o, "  tls                   {tls}");
    for (name, value) in &t.headers {
        let shown = match value {
            HeaderValue::Secret(r) => format!("<secret from {}>", reference(r)),
            HeaderValue::Literal(v) => header_for_display(name, v),
        };
        let _ = writeln!(o, "  header                {name}: {shown}");
    }
    let _ = writeln!(
        o,
        "  sampling              {} of new traces (a caller's sampled flag is followed)",
        t.sampling
    );
    let _ = writeln!(o, "  service_name          {}", t.service_name);
    let _ = writeln!(
        o,
        "  timeout               {:?} per export (a slower collector loses that batch, never a call)",
        t.timeout
    );
    let _ = writeln!(
        o,
        "  queue                 {} spans (more are dropped and counted)",
        t.queue
    );
}

/// Where a secret comes from, never its value.
fn reference(r: &SecretRef) -> String {
    match r {
        SecretRef::Env(n) => format!("env:{n}"),
        SecretRef::File(f) => format!("file:{}", f.display()),
        SecretRef::Dotenv { path, key } => format!("dotenv:{}#{key}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{parse, show::render};

    #[test]
    fn telemetry_is_shown_with_secrets_as_references_and_literal_credentials_hidden() {
        let p = parse(
            "[telemetry]\nendpoint = \"https://otel.example.com:4318\"\nca_file = \"/etc/pc/ca.pem\"\nheaders = { Authorization = \"env:OTLP_AUTH\", x-api-key = \"literal-key-9Qw\", x-tenant = \"team-a\" }\nsampling = 0.5\n",
            "p.toml",
        )
        .unwrap();
        let out = render(&p);
        assert!(out.contains("[telemetry]"), "{out}");
        assert!(
            out.contains("endpoint              https://otel.example.com:4318"),
            "{out}"
        );
        assert!(
            out.contains("verified against /etc/pc/ca.pem only"),
            "{out}"
        );
        assert!(
            out.contains("Authorization: <secret from env:OTLP_AUTH>"),
            "{out}"
        );
        assert!(out.contains("x-tenant: team-a"), "{out}");
        assert!(!out.contains("literal-key-9Qw"), "{out}");
        assert!(out.contains("sampling              0.5"), "{out}");
        assert!(!render(&parse("", "p.toml").unwrap()).contains("[telemetry]"));
    }
}
