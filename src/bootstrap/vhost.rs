//! A vhost's default queue type through the management API: `GET` and `PUT
//! /api/vhosts/{vhost}` (RabbitMQ 4.x, where replicated queues are quorum queues).
//!
//! Verified on 4.3.6: `PUT` answers 204 and is idempotent; a body with only
//! `default_queue_type` clears the vhost's description and tags, so the `PUT`
//! carries back what `GET` showed. 3.10.8 accepts the key and ignores it
//! (`"default_queue_type":"undefined"` afterwards): hence the read back.

use hyper::{Method, StatusCode};
use serde_json::{Map, Value};

use super::policy::{body_text, Api, PolicyError};
use crate::mgmt;

/// The default queue type `cluster.replication` wants on 4.x.
pub const QUORUM: &str = "quorum";

/// `/api/vhosts/{vhost}`, encoded.
pub fn path(vhost: &str) -> String {
    format!("/api/vhosts/{}", mgmt::encode_segment(vhost))
}

/// The default queue type as `GET /api/vhosts/{vhost}` shows it: top-level
/// `default_queue_type`, or `metadata.default_queue_type`; `classic` when
/// neither says (3.x shows `undefined` or nothing).
pub fn default_queue_type(v: &Value) -> &str {
    [
        &v["default_queue_type"],
        &v["metadata"]["default_queue_type"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .find(|t| *t != "undefined")
    .unwrap_or("classic")
}

/// The `PUT` body that sets the default queue type and keeps what the vhost
/// had (`description`, `tags`, `tracing`, `protected_from_deletion`).
pub fn put_body(current: &Value, queue_type: &str) -> Value {
    let mut body = Map::new();
    for key in ["description", "tags", "tracing", "protected_from_deletion"] {
        if let Some(v) = current.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), v.clone());
        }
    }
    body.insert("default_queue_type".into(), queue_type.into());
    Value::Object(body)
}

impl Api {
    /// The vhost as RabbitMQ shows it, `None` when it does not exist.
    pub async fn get_vhost(&self, vhost: &str) -> Result<Option<Value>, PolicyError> {
        self.get_object(path(vhost)).await
    }

    /// `PUT`s the vhost with `body`; the HTTP status on success (204).
    pub async fn put_vhost(&self, vhost: &str, body: Value) -> Result<StatusCode, PolicyError> {
        self.put_object(path(vhost), body).await
    }

    /// The names of the classic queues of a vhost that are not exclusive (those
    /// stay classic, unreplicated, when the default queue type changes).
    pub async fn classic_queues(&self, vhost: &str) -> Result<Vec<String>, PolicyError> {
        let path = format!(
            "/api/queues/{}?columns=name,type,exclusive",
            mgmt::encode_segment(vhost)
        );
        let r = self.request(Method::GET, &path, None).await?;
        if !r.status.is_success() {
            return Err(PolicyError::Status {
                method: "GET",
                path,
                status: r.status,
                body: body_text(&r.body),
            });
        }
        let Some(Value::Array(queues)) = r.json() else {
            return Err(PolicyError::NotJson(path));
        };
        Ok(classic_names(&queues))
    }
}

fn classic_names(queues: &[Value]) -> Vec<String> {
    queues
        .iter()
        .filter(|q| q["type"] == "classic" && q["exclusive"] != true)
        .filter_map(|q| q["name"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `GET /api/vhosts/%2F` as 4.3.6 and 3.10.8 answer it.
    const V43: &str = r#"{"name":"/","description":"Default virtual host","tags":[],"default_queue_type":"classic","protected_from_deletion":false,"metadata":{"description":"Default virtual host","tags":[],"default_queue_type":"classic"},"tracing":false,"cluster_state":{"c1@vm":"running"}}"#;
    const V43_QUORUM: &str = r#"{"name":"/","description":"Default virtual host","tags":["a","b"],"default_queue_type":"quorum","protected_from_deletion":false,"metadata":{"description":"Default virtual host","tags":["a","b"],"default_queue_type":"quorum"},"tracing":false,"cluster_state":{"c3@vm":"running"}}"#;
    const V310: &str = r#"{"name":"/","description":"Default virtual host","tags":[],"default_queue_type":"undefined","metadata":{"description":"Default virtual host","tags":[]},"tracing":false,"cluster_state":{"b1@vm":"running"}}"#;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("test JSON")
    }

    #[test]
    fn reads_the_default_queue_type_of_each_version() {
        assert_eq!(default_queue_type(&parse(V43)), "classic");
        assert_eq!(default_queue_type(&parse(V43_QUORUM)), "quorum");
        assert_eq!(default_queue_type(&parse(V310)), "classic");
        assert_eq!(
            default_queue_type(&json!({"metadata": {"default_queue_type": "quorum"}})),
            "quorum"
        );
        assert_eq!(default_queue_type(&json!({})), "classic");
    }

    #[test]
    fn the_put_keeps_description_tags_and_flags() {
        assert_eq!(
            put_body(&parse(V43_QUORUM), QUORUM),
            json!({
                "description": "Default virtual host", "tags": ["a", "b"], "tracing": false,
                "protected_from_deletion": false, "default_queue_type": "quorum"
            })
        );
        assert_eq!(
            put_body(&json!({"name": "x"}), QUORUM),
            json!({"default_queue_type": "quorum"})
        );
    }

    #[test]
    fn path_encodes_the_vhost() {
        assert_eq!(path("/"), "/api/vhosts/%2F");
    }

    #[test]
    fn exclusive_and_quorum_queues_are_not_listed_as_classic() {
        let q = json!([
            {"name": "a", "type": "classic", "exclusive": false},
            {"name": "b", "type": "quorum", "exclusive": false},
            {"name": "c", "type": "classic", "exclusive": true},
            {"name": "d", "type": "classic"}
        ]);
        assert_eq!(classic_names(q.as_array().expect("array")), ["a", "d"]);
    }
}
