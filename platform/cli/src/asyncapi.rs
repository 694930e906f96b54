//! `fractal contracts list --format asyncapi`: the system's external events as an AsyncAPI 3.0
//! document. Each hub is a server (NATS); each external event type on a hub is a channel (its
//! subject there); each service publishing or consuming it, and each bridge route reading or
//! writing it, is an operation; each message's payload is the JSON Schema of its protobuf
//! message in the canonical JSON mapping (what `fractal publish` takes and `fractal tail`
//! prints), with the envelope's headers. Of the well-known types, `Timestamp` has its JSON
//! form (an RFC 3339 string); the others are described as the messages they are.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::graph::flows;
use crate::topology::{Topology, matches};

/// The AsyncAPI document of `topology`'s external events, with messages from `pool`.
pub(crate) fn document(topology: &Topology, pool: &DescriptorPool) -> Value {
    // The message of each external type: what the routes carrying it name, and what a route
    // renaming a type (`target_type`) delivers under the new name.
    let mut carried: BTreeMap<String, BTreeSet<String>> = flows(topology)
        .into_iter()
        .filter(|(_, flow)| !flow.contract.is_empty())
        .map(|(t, flow)| (t, flow.contract))
        .collect();
    for route in topology.bridges.iter().flat_map(|b| &b.config.routes) {
        if let Some(renamed) = &route.target_type {
            carried
                .entry(renamed.clone())
                .or_default()
                .insert(route.contract.clone());
        }
    }
    let external: BTreeSet<&str> = carried.keys().map(String::as_str).collect();

    let mut servers = Map::new();
    for (name, hub) in &topology.hubs {
        servers.insert(
            server(name),
            json!({
                "host": format!("127.0.0.1:{}", hub.port),
                "protocol": "nats",
                "description": format!("Hub `{name}`: its event stream keeps every event."),
            }),
        );
    }

    // Who writes and who reads each type on each hub.
    let mut sends: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut receives: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for service in &topology.services {
        let hub = service.hub().to_owned();
        for t in service
            .spec
            .publishes
            .iter()
            .filter(|t| external.contains(t.as_str()))
        {
            sends
                .entry((hub.clone(), t.clone()))
                .or_default()
                .insert(service.name());
        }
        for t in service
            .spec
            .consumes
            .iter()
            .filter(|t| external.contains(t.as_str()))
        {
            receives
                .entry((hub.clone(), t.clone()))
                .or_default()
                .insert(service.name());
        }
    }
    for bridge in &topology.bridges {
        let (source, target) = (&bridge.config.source.name, &bridge.config.target.name);
        for route in &bridge.config.routes {
            let who = format!("bridge {}/{}", bridge.config.name, route.name);
            for t in external
                .iter()
                .filter(|t| route.types.iter().any(|p| matches(p, t)))
            {
                receives
                    .entry((source.clone(), (*t).to_owned()))
                    .or_default()
                    .insert(who.clone());
                let delivered = route.target_type.clone().unwrap_or_else(|| (*t).to_owned());
                sends
                    .entry((target.clone(), delivered))
                    .or_default()
                    .insert(who.clone());
            }
        }
    }

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    let on_hub: BTreeSet<&(String, String)> = sends.keys().chain(receives.keys()).collect();
    for (hub, event_type) in on_hub {
        let channel = id(&format!("{hub}.{event_type}"));
        let mut channel_messages = Map::new();
        for message in carried.get(event_type).into_iter().flatten() {
            let key = id(message);
            channel_messages.insert(
                key.clone(),
                json!({"$ref": format!("#/components/messages/{key}")}),
            );
            if !messages.contains_key(&key) {
                messages.insert(key.clone(), component(message, pool, &mut schemas));
            }
        }
        let refs: Vec<Value> = channel_messages
            .keys()
            .map(|m| json!({"$ref": format!("#/channels/{channel}/messages/{m}")}))
            .collect();
        channels.insert(
            channel.clone(),
            json!({
                "address": fractal::wire::event_subject(fractal::Scope::External, event_type),
                "title": format!("{event_type} on {hub}"),
                "servers": [{"$ref": format!("#/servers/{}", server(hub))}],
                "messages": channel_messages,
            }),
        );
        for (action, by) in [("send", &sends), ("receive", &receives)] {
            for who in by
                .get(&(hub.clone(), event_type.clone()))
                .into_iter()
                .flatten()
            {
                let verb = if action == "send" {
                    "publishes"
                } else {
                    "consumes"
                };
                operations.insert(
                    id(&format!("{who}.{verb}.{hub}.{event_type}")),
                    json!({
                        "action": action,
                        "title": format!("{who} {verb} {event_type} on {hub}"),
                        "channel": {"$ref": format!("#/channels/{channel}")},
                        "messages": refs,
                    }),
                );
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": topology.name,
            "version": "1.0.0",
            "description": "The external events of the system: each hub's channels, who publishes and \
                consumes each, and the bridge routes carrying them from hub to hub.",
        },
        "defaultContentType": "application/x-protobuf",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    })
}

/// A hub's server key: AsyncAPI's server names take no dots (`north_ordering`).
fn server(hub: &str) -> String {
    hub.replace('.', "_")
}

/// An identifier AsyncAPI accepts as a key: letters, digits, `.`, `-` and `_`.
fn id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A message component: its headers (the envelope's) and payload (the message's JSON Schema).
fn component(message: &str, pool: &DescriptorPool, schemas: &mut Map<String, Value>) -> Value {
    let header = |description: &str| json!({"type": "string", "description": description});
    use fractal::wire;
    let mut headers = Map::new();
    for (name, description) in [
        (
            wire::MSG_ID,
            "The event's id (a ULID); the hub stores an id once.",
        ),
        (wire::TYPE, "The event type."),
        (
            wire::KEY,
            "The aggregate the event is about; its events are handled in order.",
        ),
        (wire::ORIGIN, "The hub the event was first published on."),
        (
            wire::PATH,
            "The hubs the event went through, the origin first.",
        ),
        (wire::TRACEPARENT, "W3C trace context of the event's trace."),
    ] {
        headers.insert(name.to_owned(), header(description));
    }
    let headers = json!({"type": "object", "properties": headers});
    let payload = match pool.get_message_by_name(message) {
        Some(descriptor) => schema_ref(&descriptor, schemas),
        None => json!({"description": format!("{message}: not in the contracts loaded")}),
    };
    json!({
        "name": message,
        "title": message,
        "contentType": "application/x-protobuf",
        "headers": headers,
        "payload": payload,
    })
}

/// A `$ref` to the schema of `message`, adding it (and those it uses) to `schemas`.
fn schema_ref(message: &MessageDescriptor, schemas: &mut Map<String, Value>) -> Value {
    let key = id(message.full_name());
    if !schemas.contains_key(&key) {
        // Placed first, so a message that contains itself refers to itself.
        schemas.insert(key.clone(), Value::Null);
        let mut properties = Map::new();
        for field in message.fields() {
            properties.insert(field.json_name().to_owned(), field_schema(&field, schemas));
        }
        let schema = json!({
            "type": "object",
            "title": message.full_name(),
            "properties": properties,
        });
        schemas.insert(key.clone(), schema);
    }
    json!({"$ref": format!("#/components/schemas/{key}")})
}

fn field_schema(field: &FieldDescriptor, schemas: &mut Map<String, Value>) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = kind_schema(&entry.map_entry_value_field().kind(), schemas);
        return json!({"type": "object", "additionalProperties": value});
    }
    let one = kind_schema(&field.kind(), schemas);
    if field.is_list() {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

/// The JSON Schema of one value in protobuf's canonical JSON mapping.
fn kind_schema(kind: &Kind, schemas: &mut Map<String, Value>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer"})
        }
        // 64-bit integers are strings in JSON, numbers accepted on input.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": ["string", "integer"]})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            json!({"type": "string", "format": "date-time"})
        }
        Kind::Message(m) => schema_ref(m, schemas),
    }
}
