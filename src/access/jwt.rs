//! JSON Web Token verification: signature, `alg` allow-list, issuer, audience, expiry.

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::policy::{Jwt, JwtAlgorithm, JwtKey};

#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    #[error("auth.jwt: cannot read key file `{path}`: {reason}")]
    Read { path: String, reason: String },
    #[error("auth.jwt: `{path}` is not a usable key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("auth.jwt secret: {0}")]
    Secret(#[from] crate::secrets::SecretError),
}

enum Keys {
    One(Vec<DecodingKey>),
    Set(JwkSet),
}

pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    client_claim: String,
}

impl JwtVerifier {
    pub fn new(cfg: &Jwt) -> Result<JwtVerifier, JwtSetupError> {
        let algorithms: Vec<Algorithm> = cfg
            .algorithms
            .iter()
            .map(|a| match a {
                JwtAlgorithm::Hs256 => Algorithm::HS256,
                JwtAlgorithm::Rs256 => Algorithm::RS256,
                JwtAlgorithm::EdDsa => Algorithm::EdDSA,
            })
            .collect();
        let keys = match &cfg.key {
            JwtKey::Secret(source) => {
                let secret = crate::secrets::resolve("auth.jwt.secret", source)?;
                Keys::One(vec![DecodingKey::from_secret(secret.as_bytes())])
            }
            JwtKey::PublicKeyPem(path) => {
                let pem = read(path)?;
                // The file's key type decides which of the configured algorithms it serves.
                let mut keys = Vec::new();
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    keys.push(k);
                }
                if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                    keys.push(k);
                }
                if keys.is_empty() {
                    return Err(JwtSetupError::BadKey {
                        path: path.display().to_string(),
                        reason: "expected a PEM RSA or Ed25519 public key".into(),
                    });
                }
                Keys::One(keys)
            }
            JwtKey::Jwks(path) => {
                let text = read(path)?;
                let set: JwkSet =
                    serde_json::from_slice(&text).map_err(|e| JwtSetupError::BadKey {
                        path: path.display().to_string(),
                        reason: format!("not a JWKS document: {e}"),
                    })?;
                Keys::Set(set)
            }
        };
        let mut validation =
            Validation::new(algorithms.first().copied().unwrap_or(Algorithm::RS256));
        validation.algorithms = algorithms;
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.required_spec_claims =
            HashSet::from(["exp".to_owned(), "iss".to_owned(), "aud".to_owned()]);
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway.as_secs();
        Ok(JwtVerifier {
            keys,
            validation,
            client_claim: cfg.client_claim.clone(),
        })
    }

    /// Verifies `token`; returns the value of the client claim.
    /// The token's client (its `client_claim`) and all its claims, once it is verified.
    pub fn verify(&self, token: &str) -> Result<(String, Value), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT: {e}"))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err("the JWT algorithm is not accepted".into());
        }
        // Validate against the token's own (allowed) algorithm only: the library insists that
        // every algorithm of a validation matches the key's family.
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let candidates: Vec<DecodingKey> = match &self.keys {
            Keys::One(keys) => keys.clone(),
            Keys::Set(set) => {
                let jwk = match header.kid.as_deref() {
                    Some(kid) => set
                        .find(kid)
                        .ok_or_else(|| format!("no key with kid `{kid}` in the JWKS"))?,
                    None if set.keys.len() == 1 => &set.keys[0],
                    None => return Err("JWT has no `kid` and the JWKS holds several keys".into()),
                };
                vec![DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWKS key: {e}"))?]
            }
        };
        let mut last = String::from("no key");
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    return match data.claims.get(&self.client_claim) {
                        Some(Value::String(s)) if !s.is_empty() => {
                            Ok((s.clone(), data.claims.clone()))
                        }
                        _ => Err(format!("JWT has no string `{}` claim", self.client_claim)),
                    }
                }
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the JWT has expired".into(),
        K::ImmatureSignature => "the JWT is not valid yet (nbf)".into(),
        K::InvalidSignature => "the JWT signature does not verify".into(),
        K::InvalidIssuer => "the JWT issuer is not accepted".into(),
        K::InvalidAudience => "the JWT audience is not this gateway".into(),
        K::InvalidAlgorithm => "the JWT algorithm is not accepted".into(),
        K::MissingRequiredClaim(c) => format!("the JWT lacks the `{c}` claim"),
        _ => format!("invalid JWT: {e}"),
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, JwtSetupError> {
    std::fs::read(path).map_err(|e| JwtSetupError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
