//! Who may do what on each hub, derived from the topology. Every client of a hub has its own
//! nkey: each service, each side of each bridge, the provisioning step and the operator's
//! tools. A hub's server configuration holds only the public keys, each with the permissions
//! that let its client do its own work and nothing else:
//!
//! - a service publishes its subsystem's internal events, the external contracts its
//!   `publishes` lists and faults under its own name; it pulls and acknowledges only its own
//!   durable consumer, and reads and writes only the view buckets its `views` lists;
//! - a bridge, on its source hub, pulls and acknowledges only its routes' durables and writes
//!   its own faults; on its target hub it publishes only its routes' external types;
//! - the provisioning step administers streams and consumers and publishes no events;
//! - the operator's tools (`fractal tail`, `publish`, `faults`, the demo) may do anything.
//!
//! Every client but the operator gets replies only on its own inbox, `_INBOX.<client>.>`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fractal::wire;

use crate::topology::Topology;

/// The client that provisions streams, consumers and views.
pub(crate) const PROVISIONER: &str = "provisioner";
/// The client of the operator's tools.
pub(crate) const OPERATOR: &str = "operator";

/// One client of a hub and what it may do there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Client {
    /// A single token naming it: `delivery-dispatch`, `bridge-delivery-to-system-source`.
    pub(crate) id: String,
    /// What it is, for people: `service delivery/dispatch`.
    pub(crate) what: String,
    /// In short, what it may do, for people.
    pub(crate) grants: Grants,
    /// Subjects it may publish on (JetStream API requests included).
    pub(crate) publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub(crate) subscribe: Vec<String>,
    /// Whether it may answer the requests it receives (a service's control requests).
    pub(crate) responds: bool,
}

/// What a client may do, in the topology's words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Grants {
    /// The events it may publish (subject patterns).
    pub(crate) events: Vec<String>,
    /// The subject of its faults.
    pub(crate) faults: Option<String>,
    /// The durable consumers it may pull from and acknowledge.
    pub(crate) durables: Vec<String>,
    /// The views whose buckets it may read and write.
    pub(crate) views: Vec<String>,
    /// Anything else, in words.
    pub(crate) other: Option<String>,
}

impl Client {
    fn new(id: String, what: String, grants: Grants, publish: Vec<String>) -> Client {
        let subscribe = vec![format!("_INBOX.{id}.>")];
        Client {
            id,
            what,
            grants,
            publish,
            subscribe,
            responds: false,
        }
    }
}

/// The credential id of a service (`<subsystem>/<service>`).
pub(crate) fn service_id(service: &str) -> String {
    service.replace('/', "-")
}

/// The credential id of one side (`source` or `target`) of a bridge.
pub(crate) fn bridge_id(bridge: &str, side: &str) -> String {
    format!("bridge-{bridge}-{side}")
}

/// Reading the information of the hub's two streams.
fn stream_info(events: &str, faults: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{events}"),
        format!("$JS.API.STREAM.INFO.{faults}"),
    ]
}

/// Creating (or updating) durable consumer `durable` on `stream`, pulling from it and
/// acknowledging what it delivers.
fn durable(stream: &str, durable: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        format!("$JS.ACK.{stream}.{durable}.>"),
        // A `latest-per-key` start reads the lake's headers once through a consumer of its
        // own.
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}_backfill"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}_backfill.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}_backfill"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}_backfill"),
        // A view rebuild reads the lake through another.
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}_rebuild"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}_rebuild.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}_rebuild"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}_rebuild"),
    ]
}

/// Reading and writing view `view`'s two buckets (a rebuild alternates between them), and
/// watching them, without administering them; reading its binding in the hub's `views` bucket
/// and writing it (a rebuild switches it).
fn view(view: &str) -> Vec<String> {
    let mut subjects = Vec::new();
    for bucket in [format!("view_{view}"), format!("view_{view}__b")] {
        let stream = format!("KV_{bucket}");
        subjects.extend([
            format!("$KV.{bucket}.>"),
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            // The ordered consumers that list and watch it.
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.*"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        ]);
    }
    let bindings = fractal::view::rebuild::BINDINGS;
    subjects.extend([
        format!("$KV.{bindings}.{view}"),
        format!("$JS.API.STREAM.INFO.KV_{bindings}"),
        format!("$JS.API.STREAM.MSG.GET.KV_{bindings}"),
        format!("$JS.API.DIRECT.GET.KV_{bindings}.$KV.{bindings}.{view}"),
    ]);
    subjects
}

/// Every client of hub `hub` and its permissions, the provisioning step and the operator
/// first.
pub(crate) fn clients(topology: &Topology, hub: &str) -> Vec<Client> {
    let mut clients = vec![
        Client::new(
            PROVISIONER.into(),
            "the provisioning step".into(),
            Grants {
                other: Some("administer streams, consumers and views; no events".into()),
                ..Grants::default()
            },
            vec!["$JS.API.>".into()],
        ),
        Client {
            id: OPERATOR.into(),
            what: "the operator's tools".into(),
            grants: Grants {
                other: Some("anything".into()),
                ..Grants::default()
            },
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            responds: false,
        },
    ];
    for service in topology.services.iter().filter(|s| s.hub() == hub) {
        let config = &service.config;
        let events_stream = &config.hub.events.name;
        let mut events = vec![wire::event_subject(fractal::Scope::Internal, ">")];
        events.extend(
            service
                .spec
                .publishes
                .iter()
                .map(|t| wire::event_subject(fractal::Scope::External, t)),
        );
        let faults = format!("{}.{}.>", wire::FAULTS_PREFIX, config.service);
        let own = config
            .consumer
            .durable
            .as_deref()
            .unwrap_or(&config.service);
        let mut publish = events.clone();
        publish.push(faults.clone());
        publish.extend(stream_info(events_stream, &config.hub.faults.name));
        publish.extend(durable(events_stream, own));
        for name in &service.spec.views {
            publish.extend(view(name));
        }
        // Flow control of the ordered consumers that read views.
        publish.push("$JS.FC.>".into());
        let grants = Grants {
            events,
            faults: Some(faults),
            durables: vec![own.to_owned()],
            views: service.spec.views.clone(),
            other: None,
        };
        let mut client = Client::new(
            service_id(&service.name()),
            format!("service {}", service.name()),
            grants,
            publish,
        );
        // Its control requests (a view rebuild), which it answers.
        client.subscribe.push(format!(
            "{}.>",
            fractal::view::rebuild::control_prefix(&config.service)
        ));
        client.responds = true;
        clients.push(client);
    }
    for bridge in &topology.bridges {
        let config = &bridge.config;
        if config.source.name == hub {
            let events = &config.source.events.name;
            let faults = format!("{}.bridge-{}.>", wire::FAULTS_PREFIX, config.name);
            let durables: Vec<String> = config
                .routes
                .iter()
                .map(|route| format!("bridge-{}-{}", config.name, route.name))
                .collect();
            let mut publish = stream_info(events, &config.source.faults.name);
            for own in &durables {
                publish.extend(durable(events, own));
                // A route whose selection changed starts its durable again.
                publish.push(format!("$JS.API.CONSUMER.DELETE.{events}.{own}"));
            }
            publish.push(faults.clone());
            // The age of the oldest event waiting: one direct read.
            publish.push(format!("$JS.API.DIRECT.GET.{events}"));
            publish.push(format!("$JS.API.STREAM.MSG.GET.{events}"));
            let grants = Grants {
                faults: Some(faults),
                durables,
                ..Grants::default()
            };
            clients.push(Client::new(
                bridge_id(&config.name, "source"),
                format!("bridge {} (source)", config.name),
                grants,
                publish,
            ));
        }
        if config.target.name == hub {
            let events: Vec<String> = bridge
                .deliveries()
                .into_iter()
                .map(|(t, _)| wire::event_subject(fractal::Scope::External, &t))
                .collect();
            let mut publish = stream_info(&config.target.events.name, &config.target.faults.name);
            publish.extend(events.iter().cloned());
            let grants = Grants {
                events,
                ..Grants::default()
            };
            clients.push(Client::new(
                bridge_id(&config.name, "target"),
                format!("bridge {} (target)", config.name),
                grants,
                publish,
            ));
        }
    }
    clients
}

/// The nkeys of a run, one seed file per client in one folder, readable by their owner only.
/// A seed is made the first time it is asked for and kept after: a client's identity outlives
/// a restart. Deleting a seed file (with the system stopped) makes a new credential.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// The credentials in `dir`, which is created if missing.
    pub(crate) fn at(dir: &Path) -> anyhow::Result<Credentials> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Credentials {
            dir: dir.to_path_buf(),
        })
    }

    /// The seed file of client `id`.
    pub(crate) fn seed_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.nk"))
    }

    /// The public key of client `id`, making its seed if it has none yet.
    pub(crate) fn public_key(&self, id: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.seed_file(id);
        if let Ok(seed) = std::fs::read_to_string(&path) {
            let key = nkeys::KeyPair::from_seed(seed.trim())
                .with_context(|| format!("{} does not hold an nkey seed", path.display()))?;
            return Ok(key.public_key());
        }
        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().context("cannot encode a new nkey seed")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(seed.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(key.public_key())
    }

    /// The hub settings of client `id`: its seed file and its own inbox.
    pub(crate) fn client(&self, id: &str, config: &mut fractal::HubConfig) {
        config.auth = fractal::hub::AuthConfig::Nkey {
            seed: None,
            seed_file: Some(self.seed_file(id)),
        };
        config.inbox_prefix = format!("_INBOX.{id}");
    }
}

/// The `authorization` block of hub `hub`'s server configuration: each client's public key
/// with its permissions.
pub(crate) fn authorization(
    topology: &Topology,
    hub: &str,
    credentials: &Credentials,
) -> anyhow::Result<String> {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut block = String::from(
        "# Each client's public key, with what it may publish and subscribe to; derived from\n\
         # the topology. The seeds are secrets, kept apart.\nauthorization {\n  users: [\n",
    );
    for client in clients(topology, hub) {
        block.push_str(&format!(
            "    # {}\n    {{ nkey: {}, permissions: {{\n        publish: {{ allow: [{}] }},\n        subscribe: {{ allow: [{}] }}{}\n    }} }}\n",
            client.what,
            credentials.public_key(&client.id)?,
            list(&client.publish),
            list(&client.subscribe),
            if client.responds {
                ",\n        allow_responses: true"
            } else {
                ""
            },
        ));
    }
    block.push_str("  ]\n}\n");
    Ok(block)
}

/// Who may do what on every hub, as a Markdown table per hub.
pub(crate) fn table(topology: &Topology) -> String {
    let code = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    for hub in topology.hubs.keys() {
        out.push_str(&format!(
            "**Hub `{hub}`**\n\n| client | publishes | faults | pulls | views |\n| --- | --- | --- | --- | --- |\n"
        ));
        for client in clients(topology, hub) {
            let grants = &client.grants;
            let events = match &grants.other {
                Some(other) => other.clone(),
                None => code(&grants.events),
            };
            out.push_str(&format!(
                "| {} | {events} | {} | {} | {} |\n",
                client.what,
                code(grants.faults.as_slice()),
                code(&grants.durables),
                code(&grants.views),
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Topology {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fractal.toml");
        Topology::load(&path).expect("the shipped topology loads")
    }

    fn client(hub: &str, id: &str) -> Client {
        clients(&shipped(), hub)
            .into_iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("{id} on {hub}"))
    }

    #[test]
    fn a_service_gets_its_events_durable_and_views_and_nothing_of_another() {
        let dispatch = client("delivery", "delivery-dispatch");
        for granted in [
            "events.internal.>",
            "faults.dispatch.>",
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.dispatch",
            "$JS.ACK.EVENTS.dispatch.>",
            "$KV.view_dispatch_drivers.>",
            "$JS.API.STREAM.INFO.KV_view_dispatch_waiting",
        ] {
            assert!(dispatch.publish.iter().any(|s| s == granted), "{granted}");
        }
        assert!(
            !dispatch
                .publish
                .iter()
                .any(|s| s.starts_with("events.external.")
                    || s.contains("view_deliveries")
                    || s.ends_with(".drivers")),
            "{:?}",
            dispatch.publish
        );
        assert_eq!(
            dispatch.subscribe,
            ["_INBOX.delivery-dispatch.>", "fractal.control.dispatch.>"]
        );
        assert!(dispatch.responds, "it answers its control requests");

        let gateway = client("delivery", "delivery-gateway");
        assert_eq!(
            gateway.grants.events,
            [
                "events.internal.>",
                "events.external.order.driver_assigned",
                "events.external.order.picked_up",
                "events.external.order.delivered",
            ]
        );
    }

    #[test]
    fn a_bridge_pulls_its_routes_on_the_source_and_publishes_them_on_the_target() {
        let source = client("delivery", "bridge-delivery-to-system-source");
        assert_eq!(source.grants.durables, ["bridge-delivery-to-system-orders"]);
        assert!(source.grants.events.is_empty());
        assert!(!source.publish.iter().any(|s| s.starts_with("events.")));

        let target = client("system", "bridge-delivery-to-system-target");
        assert_eq!(
            target.publish,
            [
                "$JS.API.STREAM.INFO.EVENTS",
                "$JS.API.STREAM.INFO.FAULTS",
                "events.external.order.driver_assigned",
                "events.external.order.picked_up",
                "events.external.order.delivered",
            ]
        );
    }

    #[test]
    fn only_the_provisioning_step_and_the_operator_administer_streams() {
        let topology = shipped();
        for hub in topology.hubs.keys() {
            for client in clients(&topology, hub) {
                let admin = client.publish.iter().any(|s| {
                    ["CREATE", "UPDATE", "DELETE", "PURGE"]
                        .iter()
                        .any(|verb| s.starts_with(&format!("$JS.API.STREAM.{verb}")))
                        || s.starts_with("$JS.API.>")
                        || s == ">"
                });
                assert_eq!(
                    admin,
                    [PROVISIONER, OPERATOR].contains(&client.id.as_str()),
                    "{} on {hub}",
                    client.id
                );
            }
        }
    }

    #[test]
    fn a_seed_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::at(&dir.path().join("credentials")).unwrap();
        let key = credentials.public_key("delivery-dispatch").unwrap();
        assert!(key.starts_with('U'), "{key}");
        assert_eq!(credentials.public_key("delivery-dispatch").unwrap(), key);
        assert_ne!(credentials.public_key("delivery-drivers").unwrap(), key);
        let authorization = authorization(&shipped(), "delivery", &credentials).unwrap();
        assert!(
            authorization.contains(&format!("nkey: {key}")),
            "{authorization}"
        );
        assert!(
            authorization.contains("\"$JS.API.CONSUMER.MSG.NEXT.EVENTS.dispatch\""),
            "{authorization}"
        );
    }
}
