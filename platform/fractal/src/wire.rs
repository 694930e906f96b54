//! The wire conventions every hub shares: subjects, header names and event type names.
//!
//! Subjects name the scope and the type, so that a stream, a consumer filter or a bridge route
//! selects events by subject alone:
//!
//! | subject | what |
//! | --- | --- |
//! | `events.internal.<type>` | an event private to the hub's subsystem |
//! | `events.external.<type>` | a contract, the only kind a bridge relays |
//! | `faults.<service>.<type>` | a message `<service>` could not process (`malformed` when it had no type) |

use std::fmt;

/// Header carrying the event id; JetStream de-duplicates on it.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Header carrying the event type, so routing never decodes the body.
pub const TYPE: &str = "Fractal-Type";
/// Header carrying the partition key, so a consumer orders events without decoding them.
pub const KEY: &str = "Fractal-Key";
/// Header naming the hub where the event was first published.
pub const ORIGIN: &str = "Fractal-Origin";
/// Header listing every hub the event has been stored in, in order, comma-separated.
pub const PATH: &str = "Fractal-Path";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// On a resubmitted fault only: the durable consumer the event is resubmitted to. Every other
/// consumer acknowledges it without handling it.
pub const RESUBMIT_FOR: &str = "Fractal-Resubmit-For";
/// Header of a replayed copy of an event (`fractal replay`): the replay's id. A replayed
/// copy also names its one consumer in [`RESUBMIT_FOR`].
pub const REPLAY: &str = "Fractal-Replay";
/// W3C trace state header.
pub const TRACESTATE: &str = "tracestate";

/// Whether an event stays inside its subsystem or is a contract that may cross hubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Private to one subsystem; may change whenever that subsystem changes.
    Internal,
    /// A versioned, backward-compatible contract: the only kind a bridge relays.
    External,
}

impl Scope {
    /// The subject token for this scope.
    pub fn token(self) -> &'static str {
        match self {
            Scope::Internal => "internal",
            Scope::External => "external",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Prefix of every event subject.
pub const EVENTS_PREFIX: &str = "events";
/// Prefix of every fault subject.
pub const FAULTS_PREFIX: &str = "faults";

/// The subject an event of `event_type` is published on.
pub fn event_subject(scope: Scope, event_type: &str) -> String {
    format!("{EVENTS_PREFIX}.{}.{event_type}", scope.token())
}

/// The subject filter matching events of `event_type` in either scope.
pub fn event_filter(event_type: &str) -> String {
    format!("{EVENTS_PREFIX}.*.{event_type}")
}

/// The subject a fault raised by `service` for an event of `event_type` is published on.
pub fn fault_subject(service: &str, event_type: Option<&str>) -> String {
    format!(
        "{FAULTS_PREFIX}.{service}.{}",
        event_type.unwrap_or("malformed")
    )
}

/// Splits an event subject into its scope and type.
pub fn parse_event_subject(subject: &str) -> Option<(Scope, &str)> {
    let rest = subject.strip_prefix(EVENTS_PREFIX)?.strip_prefix('.')?;
    let (scope, event_type) = rest.split_once('.')?;
    let scope = match scope {
        "internal" => Scope::Internal,
        "external" => Scope::External,
        _ => return None,
    };
    Some((scope, event_type))
}

/// The `Nats-Msg-Id` of the resubmission of the fault `fault_id`: its own, so that the hub does
/// not drop it as a copy of the original, and the same for every attempt, so that resubmitting
/// twice stores it once.
pub fn resubmit_id(fault_id: &str) -> String {
    format!("resubmit:{fault_id}")
}

/// The message id of replay `replay`'s copy of the event at `sequence`: a replay resumed
/// after an interruption stores each copy once.
pub fn replay_id(replay: &str, sequence: u64) -> String {
    format!("replay:{replay}:{sequence}")
}

/// Checks that `name` can be used as an event type or a service name inside a subject:
/// dot-separated tokens of lower-case letters, digits, `_` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    for token in name.split('.') {
        if token.is_empty() {
            return Err(format!("`{name}` has an empty token between dots"));
        }
        if let Some(bad) = token
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "`{name}` contains `{bad}`; use lower-case letters, digits, `_`, `-` and dots"
            ));
        }
    }
    Ok(())
}

/// Checks that `name` is a single subject token (no dots), as a service or hub name must be.
pub fn check_token(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.contains('.') {
        return Err(format!("`{name}` must be a single token, without dots"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let subject = event_subject(Scope::External, "order.placed");
        assert_eq!(subject, "events.external.order.placed");
        assert_eq!(
            parse_event_subject(&subject),
            Some((Scope::External, "order.placed"))
        );
        assert_eq!(
            parse_event_subject("events.internal.menu.changed"),
            Some((Scope::Internal, "menu.changed"))
        );
        assert_eq!(parse_event_subject("events.other.x"), None);
        assert_eq!(parse_event_subject("faults.kitchen.x"), None);
        assert_eq!(event_filter("order.placed"), "events.*.order.placed");
        assert_eq!(
            fault_subject("kitchen", Some("order.placed")),
            "faults.kitchen.order.placed"
        );
        assert_eq!(fault_subject("kitchen", None), "faults.kitchen.malformed");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("order.placed").is_ok());
        assert!(check_name("driver_status-changed.v2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("order..placed").is_err());
        assert!(check_name("Order.Placed").is_err());
        assert!(check_name("order.*").is_err());
        assert!(check_name("order >").is_err());
        assert!(check_token("kitchen").is_ok());
        assert!(check_token("kitchen.a").is_err());
    }
}
