//! TLS termination, TLS origination and the PROXY protocol, end to end: lapin
//! (with rustls) through warren to the second set of real RabbitMQ nodes that
//! `scripts/tls-nodes` starts:
//!
//!   node 1  proxy_protocol = true, plain AMQP and AMQPS
//!   node 2  plain AMQP and AMQPS
//!   node 3  plain AMQP
//!
//! and beside them `tlsmgmt1`, whose management API is HTTPS only and requires
//! a client certificate from the test CA.
//!
//! The nodes' server certificate comes from the script's test CA
//! (`$WARREN_TLS_CLUSTER_DIR/pki/ca.pem`); every certificate warren itself
//! presents is made here with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    self, admin_request, env_u16, free_port, log_text, next_error, reply_code, sharing, unique,
    Turn, Warren,
};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

// ---------------------------------------------------------------- the nodes

/// One node of the TLS set.
#[derive(Clone, Debug)]
struct TlsNode {
    /// Backend name in warren's config and Erlang node name prefix (`tls1`).
    name: String,
    amqp: SocketAddr,
    /// Only nodes 1 and 2 have AMQPS.
    amqps: SocketAddr,
    mgmt: SocketAddr,
    log: PathBuf,
}

impl TlsNode {
    fn node(&self) -> common::Node {
        common::Node {
            index: 0,
            name: format!("{}@{}", self.name, common::hostname()),
            backend: self.name.clone(),
            amqp: self.amqp,
            mgmt: self.mgmt,
        }
    }
}

fn cluster_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("WARREN_TLS_CLUSTER_DIR").unwrap_or_else(|_| "/var/tmp/warren-tls".into()),
    )
}

/// The nodes' CA (made by scripts/tls-nodes).
fn node_ca() -> PathBuf {
    cluster_dir().join("pki/ca.pem")
}

/// The three nodes, after checking that they answer, with a shared turn (see
/// `common::cluster`); fails (never skips) when they do not.
async fn tls_nodes() -> (Turn, Vec<TlsNode>) {
    let turn = sharing().await;
    let prefix = std::env::var("WARREN_TLS_NODE_PREFIX").unwrap_or_else(|_| "tls".into());
    let amqp = env_u16("WARREN_TLS_AMQP_BASE", 5740);
    let mgmt = env_u16("WARREN_TLS_MGMT_BASE", 15740);
    let host = common::hostname();
    let nodes: Vec<TlsNode> = (1..=3u16)
        .map(|i| TlsNode {
            name: format!("{prefix}{i}"),
            amqp: SocketAddr::from(([127, 0, 0, 1], amqp + i)),
            amqps: SocketAddr::from(([127, 0, 0, 1], amqp + 3 + i)),
            mgmt: SocketAddr::from(([127, 0, 0, 1], mgmt + i)),
            log: cluster_dir().join(format!("{prefix}{i}/log/{prefix}{i}@{host}.log")),
        })
        .collect();
    for n in &nodes {
        let up = common::node_answers(&n.node(), Duration::from_secs(30)).await;
        assert!(
            up && node_ca().exists(),
            "TLS test node {} (amqp {}, management {}) is not running or {} is missing: \
             start the nodes with `scripts/tls-nodes up` or run the suite with `scripts/test`",
            n.name,
            n.amqp,
            n.mgmt,
            node_ca().display()
        );
    }
    (turn, nodes)
}

// ------------------------------------------------------- certificates (rcgen)

/// A test CA in its own temporary directory, removed on drop.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = common::fresh_dir(&format!("warren-{name}"));
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).expect("CA cert");
        let ca_pem = ca.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write CA");
        Pki {
            dir,
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A leaf certificate and key (PEM) for `names`, valid until 1 January of `until_year`.
    fn leaf(&self, names: &[&str], until_year: i32) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.not_after = date_time_ymd(until_year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for localhost/127.0.0.1 as `<stem>.pem` and `<stem>.key`.
    fn write_server(&self, stem: &str, until_year: i32) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(&["localhost", "127.0.0.1"], until_year);
        let (c, k) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&c, cert).expect("write cert");
        std::fs::write(&k, key).expect("write key");
        (c, k)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unix time of 1 January of `year`, 00:00 UTC.
fn jan1(year: i32) -> i64 {
    date_time_ymd(year, 1, 1).unix_timestamp()
}

// ------------------------------------------------------------------ helpers

/// A warren config: `listeners` (YAML for `listen`/`tls`), then `backends` lines.
fn yaml(listeners: &str, extra: &str, backends: &[String]) -> String {
    let mut y = format!("admin:\n  listen: 127.0.0.1:0\n{listeners}\n{extra}\nbackends:\n");
    for b in backends {
        y.push_str(b);
        y.push('\n');
    }
    y
}

fn tls_listener(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut s = format!(
        "tls:\n  listen: 127.0.0.1:0\n  cert: {}\n  key: {}\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!("  client_ca: {}\n", ca.display()));
    }
    s
}

/// A backend entry (YAML list item) with optional extra keys, indented 4.
fn backend(n: &TlsNode, address: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {}\n    address: {address}\n    management: http://{}\n{extra}",
        n.name, n.mgmt
    )
}

const NO_PROBES: &str = "health:\n  interval: 1h\n  password: guest";

/// AMQPS through warren with lapin's rustls, trusting `ca_pem`, optionally with a
/// client certificate.
async fn amqps(
    port: u16,
    name: &str,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> lapin::Result<Connection> {
    let tls = OwnedTLSConfig {
        identity: identity.map(|(cert, key)| OwnedIdentity::PKCS8 {
            pem: cert.into_bytes(),
            key: key.into_bytes(),
        }),
        cert_chain: Some(ca_pem.to_string()),
    };
    let url = format!("amqps://guest:guest@localhost:{port}/%2f");
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(20),
        Connection::connect_with_config(&url, props, tls, lapin::runtime::default_runtime()?),
    )
    .await
    .expect("AMQPS connect finished in time")
}

/// Publishes `n` messages with confirms on a fresh queue and consumes them back.
async fn publish_and_consume(conn: &Connection, n: u32) {
    let queue = unique("q-tls");
    let ch = common::confirmed_queue(conn, &queue, common::exclusive()).await;
    common::publish_numbered(&ch, &queue, n).await;
    let mut deliveries = ch
        .basic_consume(
            queue.as_str().into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut next = 0u32;
        while next < n {
            let d = deliveries
                .next()
                .await
                .expect("stream open")
                .expect("delivery");
            assert_eq!(d.data, next.to_be_bytes(), "messages in order, intact");
            next += 1;
        }
        next
    })
    .await
    .expect("all messages back within 30 s");
    assert_eq!(got, n);
}

/// The sum of the series `name` carrying `labels` in warren's /metrics; 0 when
/// absent.
async fn metric(w: &Warren, name: &str, labels: &[(&str, &str)]) -> f64 {
    w.metrics().await.sum(name, labels)
}

/// Broker connections named `name`, as the node's management API lists them.
async fn broker_connection(node: &TlsNode, name: &str) -> serde_json::Value {
    let start = tokio::time::Instant::now();
    loop {
        let v = common::mgmt_get(
            &node.node(),
            "/api/connections?columns=name,peer_host,peer_port,ssl,client_properties",
        )
        .await
        .expect("GET /api/connections");
        let found = v.as_array().and_then(|a| {
            a.iter()
                .find(|c| c["client_properties"]["connection_name"] == name)
                .cloned()
        });
        if let Some(c) = found {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "connection {name} never listed by {}: {v}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The local ports of this network namespace's established IPv4 connections to
/// `server` (for a client made by a library that does not tell its own port).
/// Each port once: /proc/net/tcp is read in several chunks while sockets come
/// and go, and can then list a socket twice (CI saw `[48142, 48142]`).
fn client_ports_to(server: SocketAddr) -> Vec<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let ports: std::collections::BTreeSet<u16> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let port = |a: &str| u16::from_str_radix(a.split(':').nth(1)?, 16).ok();
            (*state == "01" && port(remote)? == server.port()).then(|| port(local))?
        })
        .collect();
    ports.into_iter().collect()
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_publishes_and_consumes_through_warren() {
    let (_turn, nodes) = tls_nodes().await;
    let pki = Pki::new("term");
    let (cert, key) = pki.write_server("server", 2031);
    // TLS only: no plain listener at all.
    let w = Warren::start(&yaml(
        &tls_listener(&cert, &key, None),
        NO_PROBES,
        &[backend(&nodes[2], nodes[2].amqp, "")],
    ))
    .await;
    let port = w.tls.expect("TLS listener").port();
    let ok_before = metric(
        &w,
        "warren_tls_handshakes_total",
        &[("side", "client"), ("result", "ok")],
    )
    .await;
    let name = unique("tls-term");
    let conn = amqps(port, &name, &pki.ca_pem, None)
        .await
        .expect("AMQPS through warren");
    publish_and_consume(&conn, 200).await;
    // The broker sees a plain connection from warren.
    let c = broker_connection(&nodes[2], &name).await;
    assert_eq!(c["ssl"], false, "{c}");
    let ok_after = metric(
        &w,
        "warren_tls_handshakes_total",
        &[("side", "client"), ("result", "ok")],
    )
    .await;
    assert!(ok_after >= ok_before + 1.0, "{ok_before} -> {ok_after}");
    let expiry = metric(
        &w,
        "warren_tls_certificate_expiry_seconds",
        &[("certificate", "listener")],
    )
    .await;
    let expected = (jan1(2031) - common_now()) as f64;
    assert!(
        (expiry - expected).abs() < 120.0,
        "expiry gauge {expiry}, expected about {expected}"
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A listener of `listeners:` terminates TLS with a certificate of its own,
/// beside the plain listener, and its connections are counted and recorded
/// under its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_listener_terminates_tls_with_its_own_certificate() {
    let nodes = common::cluster().await;
    let pki = Pki::new("named");
    let (cert, key) = pki.write_server("named", 2031);
    let port = common::free_port();
    let node = &nodes[0];
    let w = Warren::start(&format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: secure\n    \
         listen: 127.0.0.1:{port}\n    protocol: amqp\n    tls: {{cert: {}, key: {}}}\n\
         {NO_PROBES}\nbackends:\n{}",
        cert.display(),
        key.display(),
        node.backend_yaml(&node.backend)
    ))
    .await;
    let name = unique("named-tls");
    let conn = amqps(port, &name, &pki.ca_pem, None)
        .await
        .expect("AMQPS through the named listener");
    publish_and_consume(&conn, 50).await;
    let accepted = metric(
        &w,
        "warren_listener_accepted_connections_total",
        &[("listener", "secure")],
    )
    .await;
    assert!(accepted >= 1.0, "accepted on `secure`: {accepted}");
    let (status, body) = w.admin_get("/api/connections").await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mine = list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["connection_name"] == name.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {body}"));
    assert_eq!(mine["listener"], "secure", "{mine}");
    assert_eq!(mine["tls"], true, "{mine}");
    // A plain client on the TLS port gets no AMQP.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    plain
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("write");
    let answer = common::read_until_closed(&mut plain, Duration::from_secs(15)).await;
    assert!(
        answer
            .as_ref()
            .is_some_and(|b| !b.starts_with(b"AMQP") && !b.starts_with(&[1])),
        "a plain client got {answer:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_rejects_clients_without_a_valid_certificate() {
    let (_turn, nodes) = tls_nodes().await;
    let pki = Pki::new("mtls");
    let other = Pki::new("stranger");
    let (cert, key) = pki.write_server("server", 2031);
    let w = Warren::start(&yaml(
        &tls_listener(&cert, &key, Some(&pki.path("ca.pem"))),
        NO_PROBES,
        &[backend(&nodes[2], nodes[2].amqp, "")],
    ))
    .await;
    let port = w.tls.expect("TLS listener").port();
    let counted = |reason: &'static str| {
        let w = &w;
        async move {
            metric(
                w,
                "warren_tls_handshakes_total",
                &[("side", "client"), ("result", reason)],
            )
            .await
        }
    };

    let before = counted("no_certificate").await;
    let refused = amqps(port, &unique("mtls-none"), &pki.ca_pem, None).await;
    assert!(refused.is_err(), "a client without a certificate got in");
    assert_eq!(counted("no_certificate").await, before + 1.0);
    let text = log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("client certificate rejected") && l.contains("no_certificate")),
        "no clear log line for the rejected client:\n{text}"
    );

    let before = counted("bad_certificate").await;
    let stranger = other.leaf(&["client"], 2031);
    let refused = amqps(port, &unique("mtls-stranger"), &pki.ca_pem, Some(stranger)).await;
    assert!(
        refused.is_err(),
        "a client with a foreign certificate got in"
    );
    assert_eq!(counted("bad_certificate").await, before + 1.0);

    let good = pki.leaf(&["client"], 2031);
    let conn = amqps(port, &unique("mtls-good"), &pki.ca_pem, Some(good))
        .await
        .expect("a client with a certificate from the CA gets in");
    publish_and_consume(&conn, 10).await;
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_to_an_amqps_node() {
    let (_turn, nodes) = tls_nodes().await;
    let n2 = &nodes[1];
    let tls = format!("    tls:\n      ca: {}\n", node_ca().display());
    let w = Warren::start(&yaml(
        "listen: 127.0.0.1:0",
        NO_PROBES,
        &[backend(n2, n2.amqps, &tls)],
    ))
    .await;
    let name = unique("tls-orig");
    let conn = common::amqp_connect_named(&w.url(), &name).await;
    publish_and_consume(&conn, 200).await;
    let c = broker_connection(n2, &name).await;
    assert_eq!(c["ssl"], true, "the broker sees a TLS connection: {c}");
    assert!(
        metric(
            &w,
            "warren_tls_handshakes_total",
            &[("side", "backend"), ("result", "ok")]
        )
        .await
            >= 1.0
    );
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_refuses_a_node_it_cannot_verify() {
    let (_turn, nodes) = tls_nodes().await;
    let n2 = &nodes[1];
    let wrong = Pki::new("wrong-ca");
    let tls = format!("    tls:\n      ca: {}\n", wrong.path("ca.pem").display());
    let w = Warren::start(&yaml(
        "listen: 127.0.0.1:0",
        NO_PROBES,
        &[backend(n2, n2.amqps, &tls)],
    ))
    .await;
    let props = ConnectionProperties::default();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        Connection::connect(&w.url(), props),
    )
    .await
    .expect("in time");
    assert!(
        r.is_err(),
        "warren must not carry a client to an unverified node"
    );
    assert!(
        metric(
            &w,
            "warren_tls_handshakes_total",
            &[("side", "backend"), ("result", "bad_certificate")]
        )
        .await
            >= 1.0
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_shows_the_real_client_address_to_the_broker() {
    let (_turn, nodes) = tls_nodes().await;
    let n1 = &nodes[0];
    for version in ["v1", "v2"] {
        let w = Warren::start(&yaml(
            "listen: 127.0.0.1:0",
            NO_PROBES,
            &[backend(
                n1,
                n1.amqp,
                &format!("    send_proxy: {version}\n"),
            )],
        ))
        .await;
        let name = unique(&format!("proxy-{version}"));
        let conn = common::amqp_connect_named(&w.url(), &name).await;
        let ports = client_ports_to(w.amqp);
        assert_eq!(ports.len(), 1, "one client connection to warren: {ports:?}");
        let c = broker_connection(n1, &name).await;
        assert_eq!(c["peer_host"], "127.0.0.1", "{version}: {c}");
        assert_eq!(
            c["peer_port"], ports[0],
            "{version}: the broker must see the client's port, not warren's: {c}"
        );
        let _ = conn.close(200, "bye".into()).await;
        w.stop().await;
    }
    // Control: without the header the broker sees warren's own port, so the
    // assertion above does tell the two apart.
    let n3 = &nodes[2];
    let w = Warren::start(&yaml(
        "listen: 127.0.0.1:0",
        NO_PROBES,
        &[backend(n3, n3.amqp, "")],
    ))
    .await;
    let name = unique("proxy-none");
    let conn = common::amqp_connect_named(&w.url(), &name).await;
    let ports = client_ports_to(w.amqp);
    let c = broker_connection(n3, &name).await;
    assert_ne!(c["peer_port"], ports[0], "{c}");
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_with_tls_end_to_end() {
    let (_turn, nodes) = tls_nodes().await;
    let n1 = &nodes[0];
    let pki = Pki::new("both");
    let (cert, key) = pki.write_server("server", 2031);
    // TLS from the client to warren, the PROXY header then TLS from warren to the node.
    let extra = format!(
        "    send_proxy: v2\n    tls:\n      ca: {}\n      server_name: localhost\n",
        node_ca().display()
    );
    let w = Warren::start(&yaml(
        &tls_listener(&cert, &key, None),
        NO_PROBES,
        &[backend(n1, n1.amqps, &extra)],
    ))
    .await;
    let tls_addr = w.tls.expect("TLS listener");
    let name = unique("proxy-tls");
    let conn = amqps(tls_addr.port(), &name, &pki.ca_pem, None)
        .await
        .expect("AMQPS through warren to an AMQPS node");
    let ports = client_ports_to(tls_addr);
    assert_eq!(ports.len(), 1, "{ports:?}");
    let c = broker_connection(n1, &name).await;
    assert_eq!(c["ssl"], true, "{c}");
    assert_eq!(c["peer_port"], ports[0], "{c}");
    // A big message through two TLS hops, intact.
    let queue = unique("q-big-tls");
    let ch = common::confirmed_queue(&conn, &queue, common::exclusive()).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let got = common::round_trip(&ch, &queue, &payload, Duration::from_secs(60)).await;
    assert!(got == payload, "8 MiB payload changed on the way");
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_leave_a_proxy_protocol_listener_alone() {
    let (_turn, nodes) = tls_nodes().await;
    let n1 = &nodes[0];
    let log_before = std::fs::read_to_string(&n1.log)
        .map(|s| s.len())
        .unwrap_or(0);
    let w = Warren::start(&yaml(
        "listen: 127.0.0.1:0",
        "health:\n  interval: 100ms\n  fast_interval: 100ms\n  password: guest",
        &[backend(n1, n1.amqp, "    send_proxy: v1\n")],
    ))
    .await;
    // About 20 probes of the AMQP port.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = w.backend(&n1.name).await;
    assert_eq!(b["state"], "up", "{b}");
    assert!(b["last_check"].is_number(), "probes ran: {b}");
    let conn = common::amqp_connect_named(&w.url(), &unique("after-probes")).await;
    publish_and_consume(&conn, 5).await;
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
    let log = std::fs::read_to_string(&n1.log).unwrap_or_default();
    let new = log.get(log_before..).unwrap_or("");
    assert!(
        !new.contains("crasher"),
        "the probes crashed connection processes on {}:\n{new}",
        n1.name
    );
}

/// A raw TLS client of `addr` (rustls, trusting `pki`'s CA, for `localhost`),
/// handshake done.
async fn tls_client(
    addr: SocketAddr,
    pki: &Pki,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_file_iter(pki.path("ca.pem")).expect("CA") {
        let c: rustls::pki_types::CertificateDer<'static> = c.expect("CA cert");
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake")
}

/// Waits (bounded) until the TLS listener is bound to `addr`.
async fn wait_tls_listener(w: &Warren, addr: SocketAddr) {
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        while w.app.proxy.tls_listener.local_addr() != Some(addr) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "the TLS listener never moved to {addr}");
}

/// Certificates are re-read by the real reload paths (`POST /api/reload`, then
/// SIGHUP), open TLS connections carry on, a broken key changes nothing, and a
/// changed `tls.listen` is rebound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_open_connections() {
    let (_turn, nodes) = tls_nodes().await;
    let old = Pki::new("reload-old");
    let new = Pki::new("reload-new");
    let (cert, key) = old.write_server("server", 2031);
    let write_config = |listeners: &str| {
        let text = yaml(
            listeners,
            NO_PROBES,
            &[backend(&nodes[2], nodes[2].amqp, "")],
        );
        let path = old.path("warren.yaml");
        std::fs::write(&path, text).expect("write config");
        path
    };
    let path = write_config(&tls_listener(&cert, &key, None));
    let w = Warren::start_file(&path).await;
    let port = w.tls.expect("TLS listener").port();
    let open = amqps(port, &unique("reload-open"), &old.ca_pem, None)
        .await
        .expect("connect with the old certificate");
    publish_and_consume(&open, 5).await;
    // The TLS data path counts its bytes like the plain one.
    let backend_name = [("backend", nodes[2].name.as_str())];
    let sent = metric(&w, "warren_backend_sent_bytes_total", &backend_name).await;
    let received = metric(&w, "warren_backend_received_bytes_total", &backend_name).await;
    assert!(
        sent > 0.0 && received > 0.0,
        "sent {sent}, received {received}"
    );

    // Replace the files with a certificate from another CA, then POST /api/reload.
    let (new_cert, new_key) = new.leaf(&["localhost", "127.0.0.1"], 2032);
    std::fs::write(&cert, &new_cert).expect("write cert");
    std::fs::write(&key, &new_key).expect("write key");
    let (status, body) = w.admin_post("/api/reload").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["tls_reloaded"], true, "{body}");

    // The open connection carries on; new clients get the new certificate.
    publish_and_consume(&open, 20).await;
    let fresh = amqps(port, &unique("reload-new"), &new.ca_pem, None)
        .await
        .expect("connect with the new certificate");
    publish_and_consume(&fresh, 5).await;
    assert!(
        amqps(port, &unique("reload-stale"), &old.ca_pem, None)
            .await
            .is_err(),
        "the old certificate is still served"
    );
    let expiry = metric(
        &w,
        "warren_tls_certificate_expiry_seconds",
        &[("certificate", "listener")],
    )
    .await;
    assert!(
        ((jan1(2032) - common_now()) as f64 - expiry).abs() < 120.0,
        "{expiry}"
    );
    assert!(
        metric(&w, "warren_backend_sent_bytes_total", &backend_name).await > sent,
        "bytes of the TLS connections are counted"
    );

    // A broken key is an error naming the file and key, and changes nothing.
    std::fs::write(&key, "not a key").expect("write key");
    let (status, body) = w.admin_post("/api/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(&key.display().to_string()), "{body}");
    assert!(body.contains("tls.key"), "{body}");
    let again = amqps(port, &unique("reload-kept"), &new.ca_pem, None)
        .await
        .expect("the last good certificate is still served");
    publish_and_consume(&open, 5).await;

    // SIGHUP: a good key again and a new `tls.listen`; the listener moves, open
    // connections stay.
    std::fs::write(&key, &new_key).expect("write key");
    let moved: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let listeners = tls_listener(&cert, &key, None).replace("127.0.0.1:0", &moved.to_string());
    write_config(&listeners);
    warren::control::reload::watch_sighup(w.app.clone());
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    wait_tls_listener(&w, moved).await;
    let on_new_port = amqps(moved.port(), &unique("reload-moved"), &new.ca_pem, None)
        .await
        .expect("connect on the new tls.listen");
    publish_and_consume(&on_new_port, 5).await;
    publish_and_consume(&open, 5).await;
    publish_and_consume(&again, 5).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the old TLS port still accepts"
    );
    for c in [open, fresh, again, on_new_port] {
        let _ = c.close(200, "bye".into()).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_a_tls_client_with_320() {
    let (_turn, nodes) = tls_nodes().await;
    let pki = Pki::new("drain");
    let (cert, key) = pki.write_server("server", 2031);
    let n3 = &nodes[2];
    let w = Warren::start(&yaml(
        &tls_listener(&cert, &key, None),
        &format!("{NO_PROBES}\ndrain:\n  window: 0s\n  grace: 10s"),
        &[backend(n3, n3.amqp, "")],
    ))
    .await;
    let port = w.tls.expect("TLS listener").port();
    let conn = amqps(port, &unique("tls-drain"), &pki.ca_pem, None)
        .await
        .expect("connect");
    publish_and_consume(&conn, 5).await;
    // Listening for the close before the drain starts (it takes milliseconds).
    let (err, (status, body)) = tokio::join!(next_error(&conn, Duration::from_secs(15)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        admin_request(w.admin, "POST", &format!("/api/backends/{}/drain", n3.name)).await
    });
    assert_eq!(status, 200, "{body}");
    let err = err.expect("the client is told to close");
    assert_eq!(reply_code(&err), Some(320), "{err:?}");
    // The connection's task ends: nothing left on the backend.
    w.wait_active(&n3.name, 0, Duration::from_secs(10)).await;
    w.stop().await;
}

/// Half-close through the TLS data path: the client's close_notify and FIN reach
/// the backend as a FIN, and the backend's answer still comes back. Against a
/// small TCP backend that answers only after the client has finished sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_propagated_over_tls() {
    let _turn = sharing().await;
    let baddr = common::counting_backend().await;
    let pki = Pki::new("halfclose");
    let (cert, key) = pki.write_server("server", 2031);
    let w = Warren::start(&format!(
        "admin:\n  listen: 127.0.0.1:0\n{}health:\n  interval: 1h\nbackends:\n  - name: echo\n    address: {baddr}\n",
        tls_listener(&cert, &key, None)
    ))
    .await;
    let mut c = tls_client(w.tls.expect("TLS listener"), &pki).await;
    let reply = common::half_close_exchange(&mut c, 300_000).await;
    assert_eq!(reply, "got 300008 bytes");
    w.stop().await;
}

/// The TLS listener turns away, before any backend connection, a client that
/// does not speak TLS and a TLS client that does not speak AMQP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_turns_away_non_tls_and_non_amqp_clients() {
    let _turn = sharing().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Accepts and at once drops whatever reaches it.
    let baddr = common::tcp_server(|_| async {}).await;
    let pki = Pki::new("turnaway");
    let (cert, key) = pki.write_server("server", 2031);
    let w = Warren::start(&format!(
        "admin:\n  listen: 127.0.0.1:0\n{}health:\n  interval: 1h\nbackends:\n  - name: sink\n    address: {baddr}\n",
        tls_listener(&cert, &key, None)
    ))
    .await;
    let addr = w.tls.expect("TLS listener");

    // Plain AMQP to the TLS port.
    let before = metric(
        &w,
        "warren_tls_handshakes_total",
        &[("side", "client"), ("result", "protocol")],
    )
    .await;
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("closed in time");
    let after = metric(
        &w,
        "warren_tls_handshakes_total",
        &[("side", "client"), ("result", "protocol")],
    )
    .await;
    assert_eq!(after, before + 1.0);

    // HTTP inside TLS.
    let before = metric(
        &w,
        "warren_listener_handshake_rejected_total",
        &[("reason", "not_amqp")],
    )
    .await;
    let mut c = tls_client(addr, &pki).await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(rest.is_empty(), "nothing comes back");
    let after = metric(
        &w,
        "warren_listener_handshake_rejected_total",
        &[("reason", "not_amqp")],
    )
    .await;
    assert_eq!(after, before + 1.0);
    assert_eq!(w.backend("sink").await["total_connections"], 0);
    w.stop().await;
}

// ------------------------------------------------ management over HTTPS

/// The node whose management API is HTTPS only (scripts/tls-nodes): its
/// backend name, AMQP port and HTTPS management address.
struct HttpsNode {
    name: String,
    amqp: SocketAddr,
    mgmt: SocketAddr,
}

/// The client certificate and key the node requires, from its CA.
fn client_cert() -> (PathBuf, PathBuf) {
    let pki = cluster_dir().join("pki");
    (pki.join("client.pem"), pki.join("client.key"))
}

/// The HTTPS-only node, after checking that it answers (over HTTPS, with the
/// test CA and client certificate: it has no plain HTTP listener).
async fn https_node() -> (Turn, HttpsNode) {
    let turn = sharing().await;
    let prefix = std::env::var("WARREN_TLS_NODE_PREFIX").unwrap_or_else(|_| "tls".into());
    let amqp = env_u16("WARREN_TLS_AMQP_BASE", 5740) + 11;
    let mgmt = env_u16("WARREN_TLS_MGMT_BASE", 15740) + 11;
    let n = HttpsNode {
        name: format!("{prefix}mgmt1"),
        amqp: SocketAddr::from(([127, 0, 0, 1], amqp)),
        mgmt: SocketAddr::from(([127, 0, 0, 1], mgmt)),
    };
    let keyed = |value: PathBuf, key: &str| warren::config::management::Keyed {
        value,
        key: key.to_string(),
    };
    let (cert, key) = client_cert();
    let tls = warren::config::ManagementTls {
        ca: Some(keyed(node_ca(), "ca")),
        server_name: None,
        client: Some((keyed(cert, "cert"), keyed(key, "key"))),
    };
    let url = format!("https://{}", n.mgmt);
    let target = warren::mgmt::Target::new(&url, &tls).expect("test PKI loads");
    let answers = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ok = warren::mgmt::request(
                &target,
                &common::guest(),
                hyper::Method::GET,
                "/api/health/checks/virtual-hosts",
                None,
                Duration::from_secs(5),
            )
            .await
            .is_ok_and(|r| r.status.is_success());
            if ok && tokio::net::TcpStream::connect(n.amqp).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        answers.is_ok(),
        "TLS test node {} (amqp {}, HTTPS management {url}) is not running: start the \
         nodes with `scripts/tls-nodes up` or run the suite with `scripts/test`",
        n.name,
        n.amqp
    );
    (turn, n)
}

/// `health.management_tls` with the node's CA and the client certificate.
fn ca_and_client_cert() -> String {
    let (cert, key) = client_cert();
    format!(
        "  management_tls:\n    ca: {}\n    cert: {}\n    key: {}\n",
        node_ca().display(),
        cert.display(),
        key.display()
    )
}

/// warren with one backend, `n`, whose management API is `https://{n.mgmt}`,
/// `health_tls` under `health.management_tls` and `own_tls` under the backend's.
async fn https_management(n: &HttpsNode, health_tls: &str, own_tls: &str) -> Warren {
    let health = format!(
        "health:\n  interval: 200ms\n  fast_interval: 100ms\n  down_interval: 200ms\n  \
         timeout: 2s\n  rise: 1\n  fall: 1\n  password: guest\n{health_tls}"
    );
    let b = format!(
        "  - name: {}\n    address: {}\n    management: https://{}\n{own_tls}",
        n.name, n.amqp, n.mgmt
    );
    Warren::start(&yaml("listen: 127.0.0.1:0", &health, &[b])).await
}

/// The backend's status once `done` holds for it; panics after 30 s.
async fn backend_when(
    w: &Warren,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = tokio::time::Instant::now();
    loop {
        let b = w.backend(name).await;
        if done(&b) {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name}: never {what}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Up through the management checks over HTTPS: the version was read (GET
/// /api/overview) and the checks of that version passed.
async fn assert_up_through_https(w: &Warren, n: &HttpsNode) {
    let b = backend_when(w, &n.name, "checked over HTTPS", |b| {
        b["state"] == "up"
            && b["rabbitmq_version"].is_string()
            && b["consecutive_successes"].as_u64() >= Some(2)
    })
    .await;
    let checks = b["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks.iter().any(|c| c == "local-alarms"),
        "the management checks ran, not the TCP connect alone: {b}"
    );
    assert!(b["last_failure"].is_null(), "{b}");
}

/// Down with a reason that names TLS, the node's address and `says`.
async fn assert_down_for_tls(w: &Warren, n: &HttpsNode, says: &str) {
    let b = backend_when(w, &n.name, "down", |b| {
        b["state"] == "down" && b["last_failure"].is_string()
    })
    .await;
    let reason = b["last_failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS") && reason.contains(&n.mgmt.to_string()) && reason.contains(says),
        "{}: the reason must say TLS, the address and `{says}`: {reason}",
        n.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_over_https_with_the_nodes_ca_and_a_client_certificate() {
    let (_turn, n) = https_node().await;
    let w = https_management(&n, &ca_and_client_cert(), "").await;
    assert_up_through_https(&w, &n).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_over_https_without_the_client_certificate_the_node_requires() {
    let (_turn, n) = https_node().await;
    let w = https_management(
        &n,
        &format!("  management_tls:\n    ca: {}\n", node_ca().display()),
        "",
    )
    .await;
    // TLS 1.3: the node's alert comes after warren's side of the handshake.
    assert_down_for_tls(&w, &n, "CertificateRequired").await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_over_https_refuses_a_certificate_from_another_ca() {
    let (_turn, n) = https_node().await;
    let wrong = Pki::new("wrong-mgmt-ca");
    let (cert, key) = client_cert();
    let w = https_management(
        &n,
        &format!(
            "  management_tls:\n    ca: {}\n    cert: {}\n    key: {}\n",
            wrong.path("ca.pem").display(),
            cert.display(),
            key.display()
        ),
        "",
    )
    .await;
    assert_down_for_tls(&w, &n, "UnknownIssuer").await;
    w.stop().await;
    // No CA file: the system's trust store, which does not hold the test CA.
    let w = https_management(
        &n,
        &format!(
            "  management_tls:\n    cert: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
        "",
    )
    .await;
    assert_down_for_tls(&w, &n, "UnknownIssuer").await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_over_https_checks_the_server_name() {
    let (_turn, n) = https_node().await;
    // The node's certificate names localhost and 127.0.0.1, not this.
    let w = https_management(
        &n,
        &ca_and_client_cert(),
        "    management_tls:\n      server_name: mq.example\n",
    )
    .await;
    assert_down_for_tls(&w, &n, "not valid for name").await;
    w.stop().await;
    // A name the certificate does carry, for an IP-addressed URL.
    let w = https_management(
        &n,
        &ca_and_client_cert(),
        "    management_tls:\n      server_name: localhost\n",
    )
    .await;
    assert_up_through_https(&w, &n).await;
    w.stop().await;
}

// ------------------------------------------------- accept_proxy (PROXY in)

/// A v1 header for a TCP connection from `src` to `dst`, both IPv4.
fn v1_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

/// A v2 header for a TCP connection from `src` to `dst`, both IPv4.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 addresses only here");
    };
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// A v2 LOCAL header (what a load balancer's own health check sends).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// A stand-in for a cloud load balancer in front of warren: every connection to
/// the returned address is connected to `target`, which first gets `header`,
/// then the bytes both ways.
async fn proxy_sender(target: SocketAddr, header: Vec<u8>) -> SocketAddr {
    let header = Arc::new(header);
    common::tcp_server(move |mut client| {
        let header = Arc::clone(&header);
        async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            if upstream.write_all(&header).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    })
    .await
}

/// An `accept_proxy` block (YAML, at `indent` spaces).
fn accept_proxy(from: &str, timeout: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!("{pad}accept_proxy:\n{pad}  from: [{from}]\n{pad}  timeout: {timeout}\n")
}

/// warren behind a load balancer that sends the PROXY protocol, in front of a
/// node with `proxy_protocol = true` (warren with `send_proxy`): the broker sees
/// the address the load balancer carried, on the plain and on the TLS listener
/// (header before the TLS handshake), and a LOCAL header leaves the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_passes_the_carried_client_on_to_the_broker() {
    let (_turn, nodes) = tls_nodes().await;
    let n1 = &nodes[0];
    let pki = Pki::new("accept-proxy");
    let (cert, key) = pki.write_server("server", 2031);
    let listeners = format!(
        "listen: 127.0.0.1:0\n{}{}{}",
        accept_proxy("127.0.0.1/32", "5s", 0),
        tls_listener(&cert, &key, None),
        accept_proxy("10.0.0.0/8, 127.0.0.1", "5s", 2),
    );
    let w = Warren::start(&yaml(
        &listeners,
        NO_PROBES,
        &[backend(n1, n1.amqp, "    send_proxy: v2\n")],
    ))
    .await;
    let lb_address: SocketAddr = "198.51.100.1:5672".parse().expect("address");

    // The plain listener, a v2 header.
    let client: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let lb = proxy_sender(w.amqp, v2_header(client, lb_address)).await;
    let name = unique("accept-v2");
    let conn = common::amqp_connect_named(&format!("amqp://guest:guest@{lb}/%2f"), &name).await;
    publish_and_consume(&conn, 3).await;
    let c = broker_connection(n1, &name).await;
    assert_eq!(c["peer_host"], "203.0.113.7", "{c}");
    assert_eq!(c["peer_port"], 40000, "{c}");
    let _ = conn.close(200, "bye".into()).await;

    // The TLS listener, a v1 header before the handshake.
    let tls_addr = w.tls.expect("TLS listener");
    let client: SocketAddr = "203.0.113.8:40001".parse().expect("address");
    let lb = proxy_sender(tls_addr, v1_header(client, lb_address)).await;
    let name = unique("accept-v1-tls");
    let conn = amqps(lb.port(), &name, &pki.ca_pem, None)
        .await
        .expect("AMQPS through a PROXY v1 sender and warren");
    let c = broker_connection(n1, &name).await;
    assert_eq!(c["peer_host"], "203.0.113.8", "{c}");
    assert_eq!(c["peer_port"], 40001, "{c}");
    let _ = conn.close(200, "bye".into()).await;

    // LOCAL: the connection's own address stands (the sender's, on loopback),
    // and warren still sends the node a PROXY header with real addresses.
    let lb = proxy_sender(w.amqp, v2_local()).await;
    let name = unique("accept-local");
    let conn = common::amqp_connect_named(&format!("amqp://guest:guest@{lb}/%2f"), &name).await;
    let c = broker_connection(n1, &name).await;
    assert_eq!(c["peer_host"], "127.0.0.1", "{c}");
    let _ = conn.close(200, "bye".into()).await;
    w.stop().await;
}

/// A backend that counts the connections on which it received any bytes (the
/// health checker's probes send none).
async fn byte_counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let addr = common::tcp_server(move |mut s| {
        let seen = Arc::clone(&seen);
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf).await {
                if n > 0 {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    })
    .await;
    (addr, count)
}

/// Sends `bytes` on a new connection to `addr` and waits (bounded) for warren
/// to close it; how long that took and whether warren sent anything.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (Duration, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    s.write_all(bytes).await.expect("write");
    let got = common::read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("warren closed the connection");
    (started.elapsed(), got)
}

/// An untrusted source that sends a header, a trusted one that sends a broken
/// one, none, or one too slowly: closed, logged, counted, and nothing reaches
/// the backend; the same listeners still carry well-behaved clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_turns_away_bad_headers_before_any_backend() {
    const REJECTED: &str = "warren_proxy_header_rejected_total";
    let (backend_addr, reached) = byte_counting_backend().await;
    let backends = [format!("  - {{name: pp-sink, address: '{backend_addr}'}}")];
    let pki = Pki::new("accept-proxy-bad");
    let (cert, key) = pki.write_server("server", 2031);
    let client: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let lb_address: SocketAddr = "198.51.100.1:5672".parse().expect("address");
    let amqp = warren::proxy::amqp::PROTOCOL_HEADER;

    // 127.0.0.1 is not a load balancer here.
    let untrusted = Warren::start(&yaml(
        &format!(
            "listen: 127.0.0.1:0\n{}{}{}",
            accept_proxy("10.0.0.0/8", "300ms", 0),
            tls_listener(&cert, &key, None),
            accept_proxy("10.0.0.0/8", "300ms", 2),
        ),
        NO_PROBES,
        &backends,
    ))
    .await;
    // 127.0.0.1 is the load balancer here.
    let trusted = Warren::start(&yaml(
        &format!(
            "listen: 127.0.0.1:0\n{}",
            accept_proxy("127.0.0.1/32", "500ms", 0)
        ),
        NO_PROBES,
        &backends,
    ))
    .await;
    let count = |reason: &'static str, listener: &'static str| {
        let w = &trusted;
        async move {
            w.metrics()
                .await
                .value(REJECTED, &[("listener", listener), ("reason", reason)])
        }
    };
    let before: Vec<f64> = futures_util::future::join_all(
        [
            ("untrusted", "amqp"),
            ("untrusted", "amqps"),
            ("malformed", "amqp"),
            ("missing", "amqp"),
            ("timeout", "amqp"),
        ]
        .map(|(r, l)| count(r, l)),
    )
    .await;

    let v1 = [&v1_header(client, lb_address)[..], amqp].concat();
    let v2 = [&v2_header(client, lb_address)[..], amqp].concat();
    // Untrusted, a header: closed at once, on either listener.
    for bytes in [&v1, &v2] {
        let (took, got) = closed_after(untrusted.amqp, bytes).await;
        assert!(
            got.is_empty() && took < Duration::from_secs(2),
            "{took:?} {got:?}"
        );
    }
    let tls_addr = untrusted.tls.expect("TLS listener");
    let (_, got) = closed_after(tls_addr, &v2).await;
    assert!(
        got.is_empty(),
        "no TLS handshake after a refused header: {got:?}"
    );
    // Trusted: a malformed header, then no header at all.
    let bad = [&b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"[..], amqp].concat();
    let (took, got) = closed_after(trusted.amqp, &bad).await;
    assert!(
        got.is_empty() && took < Duration::from_millis(450),
        "{took:?} {got:?}"
    );
    let (took, got) = closed_after(trusted.amqp, amqp).await;
    assert!(
        got.is_empty() && took < Duration::from_millis(450),
        "{took:?} {got:?}"
    );
    // Trusted, too slow: half a header, then nothing; closed after the 500 ms.
    let (took, got) = closed_after(trusted.amqp, b"PROXY TCP4 203.0.113.7 ").await;
    assert!(
        got.is_empty() && took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?} {got:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refused connection reached the backend"
    );
    let after: Vec<f64> = futures_util::future::join_all(
        [
            ("untrusted", "amqp"),
            ("untrusted", "amqps"),
            ("malformed", "amqp"),
            ("missing", "amqp"),
            ("timeout", "amqp"),
        ]
        .map(|(r, l)| count(r, l)),
    )
    .await;
    let counted: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        counted,
        [2.0, 1.0, 1.0, 1.0, 1.0],
        "untrusted amqp, untrusted amqps, malformed, missing, timeout"
    );
    let logs = log_text();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("PROXY header rejected"))
        .collect();
    for reason in ["untrusted", "malformed", "missing", "timeout"] {
        assert!(
            refusals
                .iter()
                .any(|l| l.contains(reason) && l.contains("peer=127.0.0.1:")),
            "no warning with the peer for {reason}: {refusals:?}"
        );
    }

    // Control: the same listeners carry a direct client from an untrusted
    // address and a proxied one from a trusted address, as far as the backend.
    let mut direct = tokio::net::TcpStream::connect(untrusted.amqp)
        .await
        .expect("connect");
    let mut proxied = tokio::net::TcpStream::connect(trusted.amqp)
        .await
        .expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        direct.write_all(amqp).await.expect("write");
        proxied.write_all(&v2).await.expect("write");
    }
    let start = tokio::time::Instant::now();
    while reached.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "well-behaved clients never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    untrusted.stop().await;
    trusted.stop().await;
}
