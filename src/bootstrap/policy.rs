//! Policies through the management API: `GET`/`PUT /api/policies/{vhost}/{name}`.
//!
//! A policy counts as applied only when it is read back equal to the config.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::{ApplyTo, PolicyConfig};
use crate::mgmt::{self, Credentials, MgmtError, Target};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("management API: {0}")]
    Mgmt(#[from] MgmtError),
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("GET {0}: the answer is not a JSON object")]
    NotJson(String),
}

/// `/api/policies/{vhost}/{name}`, both segments encoded.
pub fn path(p: &PolicyConfig) -> String {
    format!(
        "/api/policies/{}/{}",
        mgmt::encode_segment(&p.vhost),
        mgmt::encode_segment(&p.name)
    )
}

fn apply_to(a: ApplyTo) -> &'static str {
    match a {
        ApplyTo::Queues => "queues",
        ApplyTo::Exchanges => "exchanges",
        ApplyTo::All => "all",
    }
}

/// The `PUT` body for a policy.
pub fn body(p: &PolicyConfig) -> Value {
    json!({
        "pattern": p.pattern,
        "definition": p.definition,
        "priority": p.priority,
        "apply-to": apply_to(p.apply_to),
    })
}

/// How the policy read back from RabbitMQ differs from the config; empty when equal.
pub fn differences(p: &PolicyConfig, actual: &Value) -> Vec<String> {
    let want = body(p);
    let mut out = Vec::new();
    for key in ["pattern", "apply-to", "priority", "definition"] {
        let (w, a) = (&want[key], actual.get(key).unwrap_or(&Value::Null));
        if !json_eq(w, a) {
            out.push(format!("{key} is {a}, the config wants {w}"));
        }
    }
    out
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The management API of one node, with the credentials and timeout to use.
#[derive(Clone, Debug)]
pub struct Api {
    pub target: Target,
    pub credentials: Credentials,
    pub timeout: Duration,
}

impl Api {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<mgmt::Response, MgmtError> {
        mgmt::request(
            &self.target,
            &self.credentials,
            method,
            path,
            body,
            self.timeout,
        )
        .await
    }

    /// The policy as RabbitMQ has it, `None` when there is none.
    pub async fn get_policy(&self, p: &PolicyConfig) -> Result<Option<Value>, PolicyError> {
        self.get_object(path(p)).await
    }

    /// The JSON object at `path`, `None` on 404.
    pub async fn get_object(&self, path: String) -> Result<Option<Value>, PolicyError> {
        let r = self.request(Method::GET, &path, None).await?;
        match r.status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => match r.json() {
                Some(v @ Value::Object(_)) => Ok(Some(v)),
                _ => Err(PolicyError::NotJson(path)),
            },
            status => Err(PolicyError::Status {
                method: "GET",
                path,
                status,
                body: body_text(&r.body),
            }),
        }
    }

    /// `PUT`s the policy; the HTTP status on success (201 created, 204 updated).
    pub async fn put_policy(&self, p: &PolicyConfig) -> Result<StatusCode, PolicyError> {
        self.put_object(path(p), body(p)).await
    }

    /// `PUT`s `body` at `path`; the HTTP status on success.
    pub async fn put_object(&self, path: String, body: Value) -> Result<StatusCode, PolicyError> {
        let r = self.request(Method::PUT, &path, Some(body)).await?;
        if r.status.is_success() {
            Ok(r.status)
        } else {
            Err(PolicyError::Status {
                method: "PUT",
                path,
                status: r.status,
                body: body_text(&r.body),
            })
        }
    }
}

/// An error body for a message: RabbitMQ's `reason` when it gives one.
pub(super) fn body_text(b: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        if let Some(r) = v.get("reason").and_then(Value::as_str) {
            return r.to_string();
        }
    }
    let s = String::from_utf8_lossy(b);
    s.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha() -> PolicyConfig {
        PolicyConfig {
            name: "ha-allqueue".into(),
            vhost: "/".into(),
            pattern: "^".into(),
            apply_to: ApplyTo::Queues,
            priority: 0,
            definition: serde_json::from_str(r#"{"ha-mode":"all","ha-sync-mode":"automatic"}"#)
                .expect("test JSON"),
        }
    }

    #[test]
    fn path_encodes_vhost_and_name() {
        assert_eq!(path(&ha()), "/api/policies/%2F/ha-allqueue");
    }

    #[test]
    fn read_back_equal_has_no_differences() {
        // As 3.10.8 answers GET /api/policies/%2F/ha-allqueue.
        let actual = json!({
            "vhost": "/", "name": "ha-allqueue", "pattern": "^", "apply-to": "queues",
            "definition": {"ha-sync-mode": "automatic", "ha-mode": "all"}, "priority": 0
        });
        assert!(differences(&ha(), &actual).is_empty());
    }

    #[test]
    fn each_differing_field_is_named() {
        let actual = json!({
            "pattern": "^amq\\.", "apply-to": "all", "priority": 1,
            "definition": {"ha-mode": "exactly", "ha-params": 2}
        });
        let d = differences(&ha(), &actual);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d[0].starts_with("pattern is \"^amq\\\\.\""), "{}", d[0]);
        assert!(d[3].starts_with("definition is"), "{}", d[3]);
        assert_eq!(differences(&ha(), &json!({})).len(), 4);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_eq(&json!("1"), &json!(1)));
    }

    #[test]
    fn error_bodies_show_the_reason() {
        assert_eq!(
            body_text(br#"{"error":"bad_request","reason":"Validation failed"}"#),
            "Validation failed"
        );
        assert_eq!(body_text(b"plain"), "plain");
    }
}
