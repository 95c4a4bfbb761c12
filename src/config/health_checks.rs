//! The names `health.checks` accepts: the management API's per-node health
//! checks (`GET /api/health/checks/NAME`, RabbitMQ 3.8.10 to 4.3), with their
//! parameter forms. A name the API does not know answers 404 on every node,
//! which would take the whole cluster out; so does `alarms`, for another reason.

use super::error::{did_you_mean, hint};

/// Checks without parameters. Some exist only on later versions (a node that
/// lacks one answers 404 and warren skips it, docs/health-checks.md).
const PLAIN: &[&str] = &[
    "local-alarms",
    "virtual-hosts",
    "node-is-quorum-critical",
    "node-is-mirror-sync-critical",
    "is-in-service",
    "ready-to-serve-clients",
    "below-node-connection-limit",
    "reached-target-cluster-size",
    "metadata-store/initialized",
    "metadata-store/initialized/with-data",
];

/// Checks that take parameters, as the operator writes them.
const FORMS: &[&str] = &[
    "port-listener/PORT",
    "protocol-listener/PROTOCOL",
    "certificate-expiration/N/UNIT",
];

/// The protocol names `protocol-listener/P` understands: the listeners' own
/// names and the aliases RabbitMQ's management API maps onto them.
const PROTOCOLS: &[&str] = &[
    "amqp",
    "amqp091",
    "amqp0.9.1",
    "amqp0-9-1",
    "amqp0_9_1",
    "amqp10",
    "amqp1.0",
    "amqp1-0",
    "amqp1_0",
    "amqps",
    "clustering",
    "cli",
    "distribution",
    "http",
    "http1",
    "http1.1",
    "http_api",
    "https",
    "management",
    "management_ui",
    "ui",
    "mqtt",
    "mqtt3.1",
    "mqtt3.1.1",
    "mqtt31",
    "mqtt311",
    "mqtt3_1",
    "mqtt3_1_1",
    "mqtts",
    "mqtt+tls",
    "mqtt+ssl",
    "stomp",
    "stomp1.0",
    "stomp1.1",
    "stomp1.2",
    "stomp10",
    "stomp11",
    "stomp12",
    "stomp1_0",
    "stomp1_1",
    "stomp1_2",
    "stomps",
    "stomp+tls",
    "stomp+ssl",
    "stream",
    "webmqtt",
    "web-mqtt",
    "web_mqtt",
    "webmqtt+tls",
    "web-mqtt+tls",
    "webmqtt+ssl",
    "web-mqtt+ssl",
    "webstomp",
    "web-stomp",
    "web_stomp",
    "webstomp+tls",
    "web-stomp+tls",
    "webstomp+ssl",
    "web-stomp+ssl",
];

const UNITS: &[&str] = &["days", "weeks", "months", "years"];

/// `Ok` for a check the management API answers per node; otherwise what is
/// wrong, in the operator's words.
pub(crate) fn validate(name: &str) -> Result<(), String> {
    if name == "alarms" {
        return Err(
            "`alarms` is cluster-wide: it fails on every node while any one node has \
                    an alarm, so one alarm would take the whole cluster out; use \
                    `local-alarms` (and `health.on_alarm`)"
                .into(),
        );
    }
    if PLAIN.contains(&name) {
        return Ok(());
    }
    let (head, rest) = name.split_once('/').unwrap_or((name, ""));
    let params: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    match (head, params.as_slice()) {
        ("port-listener", [port]) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => Err(format!(
                "`{name}`: expected `port-listener/PORT` with a port number 1-65535, got `{port}`"
            )),
        },
        ("protocol-listener", [protocols]) => {
            for p in protocols.split(',') {
                if !PROTOCOLS.contains(&p.to_ascii_lowercase().as_str()) {
                    let hint = hint(did_you_mean(p, PROTOCOLS.iter().copied()));
                    return Err(format!(
                        "`{name}`: unknown protocol `{p}`{hint} (expected one of amqp, \
                         amqps, mqtt, mqtts, stomp, stomps, stream, http, https, \
                         web-mqtt, web-stomp, clustering or an alias of them)"
                    ));
                }
            }
            Ok(())
        }
        ("certificate-expiration", [n, unit]) => {
            if n.parse::<u32>().is_err() {
                return Err(format!(
                    "`{name}`: expected `certificate-expiration/N/UNIT` with a whole number N, got `{n}`"
                ));
            }
            if !UNITS.contains(unit) {
                let hint = hint(did_you_mean(unit, UNITS.iter().copied()));
                return Err(format!(
                    "`{name}`: unknown unit `{unit}`{hint} (expected days, weeks, months or years)"
                ));
            }
            Ok(())
        }
        ("port-listener" | "protocol-listener" | "certificate-expiration", _) => {
            let form = FORMS
                .iter()
                .find(|f| f.starts_with(head))
                .copied()
                .unwrap_or(head);
            Err(format!("`{name}`: expected the form `{form}`"))
        }
        _ => {
            let known = PLAIN.iter().chain(FORMS).copied();
            let hint = hint(did_you_mean(name, known).or_else(|| {
                did_you_mean(head, FORMS.iter().map(|f| f.split('/').next().unwrap_or(f)))
            }));
            Err(format!(
                "unknown health check `{name}`{hint} (the management API answers 404 for it on \
                 every node, which would take them all down; known: {}, {})",
                PLAIN.join(", "),
                FORMS.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_checks_and_their_forms_are_accepted() {
        for ok in [
            "local-alarms",
            "virtual-hosts",
            "is-in-service",
            "metadata-store/initialized/with-data",
            "port-listener/5672",
            "protocol-listener/amqp",
            "protocol-listener/amqp,mqtt",
            "protocol-listener/AMQP091",
            "certificate-expiration/30/days",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn mistakes_say_what_was_meant() {
        let e = validate("local-alarm").expect_err("typo");
        assert!(e.contains("did you mean `local-alarms`?"), "{e}");
        let e = validate("alarms").expect_err("cluster-wide");
        assert!(e.contains("cluster-wide"), "{e}");
        let e = validate("port-listener/http").expect_err("not a port");
        assert!(e.contains("port number"), "{e}");
        let e = validate("port-listener").expect_err("no port");
        assert!(e.contains("`port-listener/PORT`"), "{e}");
        let e = validate("protocol-listener/amqq").expect_err("typo");
        assert!(e.contains("did you mean `amqp`?"), "{e}");
        let e = validate("certificate-expiration/1/fortnights").expect_err("unit");
        assert!(e.contains("unknown unit `fortnights`"), "{e}");
        let e = validate("certificate-expiration/soon/days").expect_err("number");
        assert!(e.contains("whole number"), "{e}");
    }
}
