//! `fractal topology`: the system as a graph (hubs, services, bridges and the contracts along
//! each bridge), and who produces and who consumes each contract: event storming as code.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::topology::{Topology, matches};

/// Who produces, carries and consumes one event type.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// The messages the routes carrying it say it holds (none: an internal type).
    pub(crate) contract: BTreeSet<String>,
    pub(crate) producers: BTreeSet<String>,
    pub(crate) consumers: BTreeSet<String>,
    pub(crate) bridges: BTreeSet<String>,
    /// `<bridge>/<route>`.
    pub(crate) routes: BTreeSet<String>,
}

/// Every event type the topology names, by type.
pub(crate) fn flows(topology: &Topology) -> BTreeMap<String, Flow> {
    let mut flows: BTreeMap<String, Flow> = BTreeMap::new();
    for service in &topology.services {
        for t in &service.spec.publishes {
            flows
                .entry(t.clone())
                .or_default()
                .producers
                .insert(service.name());
        }
        for t in &service.spec.consumes {
            flows
                .entry(t.clone())
                .or_default()
                .consumers
                .insert(service.name());
        }
    }
    for bridge in &topology.bridges {
        for route in &bridge.config.routes {
            for pattern in &route.types {
                let known: Vec<String> = flows
                    .keys()
                    .filter(|t| matches(pattern, t))
                    .cloned()
                    .collect();
                let types = if known.is_empty() {
                    vec![pattern.clone()]
                } else {
                    known
                };
                for t in types {
                    let flow = flows.entry(t).or_default();
                    flow.contract.insert(route.contract.clone());
                    flow.bridges.insert(bridge.config.name.clone());
                    flow.routes
                        .insert(format!("{}/{}", bridge.config.name, route.name));
                }
            }
        }
    }
    flows
}

pub(crate) fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The systems a topology includes, by path (`north`, `north.city`): every hub name's
/// prefixes.
fn systems(topology: &Topology) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for hub in topology.hubs.keys() {
        let mut path = String::new();
        let tokens: Vec<&str> = hub.split('.').collect();
        for token in &tokens[..tokens.len() - 1] {
            path = if path.is_empty() {
                (*token).to_owned()
            } else {
                format!("{path}.{token}")
            };
            found.insert(path.clone());
        }
    }
    found
}

/// The system a hub or a system belongs to: its path without the last token (`` at the root).
fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(parent, _)| parent)
}

/// A step of a walk through the tree of systems: a hub, or entering or leaving a system.
enum Step<'a> {
    Hub(&'a str),
    Enter(&'a str),
    Leave,
}

/// Walks the tree of systems: at each level its hubs, then each system it includes, entered
/// and left; `visit` is given each step and its depth (0 at the top).
fn walk(topology: &Topology, visit: &mut dyn FnMut(Step<'_>, usize)) {
    fn level(
        topology: &Topology,
        systems: &BTreeSet<String>,
        at: &str,
        depth: usize,
        visit: &mut dyn FnMut(Step<'_>, usize),
    ) {
        for hub in topology.hubs.keys().filter(|h| parent(h) == at) {
            visit(Step::Hub(hub), depth);
        }
        for system in systems.iter().filter(|s| parent(s) == at) {
            visit(Step::Enter(system), depth);
            level(topology, systems, system, depth + 1, visit);
            visit(Step::Leave, depth);
        }
    }
    level(topology, &systems(topology), "", 0, visit);
}

/// The topology as indented text: the tree of systems, each with its hubs and their services.
pub(crate) fn text(topology: &Topology) -> String {
    let mut out = format!("System `{}`\n\nHubs and their services:\n", topology.name);
    walk(topology, &mut |step, depth| {
        let indent = "  ".repeat(depth + 1);
        match step {
            Step::Hub(hub) => {
                let port = topology.hubs.get(hub).map_or(0, |h| h.port);
                let _ = writeln!(out, "{indent}{hub} (port {port})");
                for service in topology.services.iter().filter(|s| s.hub() == hub) {
                    let _ = writeln!(
                        out,
                        "{indent}  {} [{}]",
                        service.name(),
                        service.spec.program
                    );
                }
            }
            Step::Enter(system) => {
                let _ = writeln!(out, "{indent}system {system}:");
            }
            Step::Leave => {}
        }
    });
    out.push_str("\nBridges:\n");
    for bridge in &topology.bridges {
        let c = &bridge.config;
        let _ = writeln!(out, "  {}: {} -> {}", c.name, c.source.name, c.target.name);
        for route in &c.routes {
            let _ = writeln!(
                out,
                "    {}: {} ({})",
                route.name,
                route.types.join(", "),
                route.contract
            );
        }
    }
    out.push_str("\nContracts:\n");
    for (event_type, flow) in flows(topology) {
        let _ = writeln!(
            out,
            "  {event_type} ({})\n    produced by {}\n    consumed by {}\n    carried by  {}",
            join(&flow.contract),
            join(&flow.producers),
            join(&flow.consumers),
            join(&flow.bridges)
        );
    }
    out
}

/// One label per route of `bridge`: its contract and the types it carries.
fn route_labels(bridge: &crate::topology::Bridge) -> Vec<String> {
    bridge
        .config
        .routes
        .iter()
        .map(|r| format!("{}: {}", r.contract, r.types.join(", ")))
        .collect()
}

fn id(name: &str) -> String {
    name.replace(['/', '-', '.'], "_")
}

/// The topology as a Mermaid flowchart: a subgraph per hub, inside one per included system.
pub(crate) fn mermaid(topology: &Topology) -> String {
    let mut out = String::from("flowchart LR\n");
    walk(topology, &mut |step, depth| {
        let indent = "  ".repeat(depth + 1);
        match step {
            Step::Hub(hub) => {
                let _ = writeln!(out, "{indent}subgraph hub_{} [hub {hub}]", id(hub));
                let services: Vec<_> = topology
                    .services
                    .iter()
                    .filter(|s| s.hub() == hub)
                    .collect();
                for service in &services {
                    let _ = writeln!(
                        out,
                        "{indent}  {}[\"{}\"]",
                        id(&service.name()),
                        service.name()
                    );
                }
                if services.is_empty() {
                    let _ = writeln!(out, "{indent}  hub_{}_events((events))", id(hub));
                }
                let _ = writeln!(out, "{indent}end");
            }
            Step::Enter(system) => {
                let _ = writeln!(
                    out,
                    "{indent}subgraph system_{} [system {system}]",
                    id(system)
                );
            }
            Step::Leave => {
                let _ = writeln!(out, "{indent}end");
            }
        }
    });
    for bridge in &topology.bridges {
        let c = &bridge.config;
        let _ = writeln!(
            out,
            "  hub_{} -->|\"bridge {}<br/>{}\"| hub_{}",
            id(&c.source.name),
            c.name,
            route_labels(bridge).join("<br/>"),
            id(&c.target.name)
        );
    }
    out
}

/// The topology as a Graphviz digraph.
pub(crate) fn dot(topology: &Topology) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  compound=true;\n",
        topology.name
    );
    walk(topology, &mut |step, depth| {
        let indent = "  ".repeat(depth + 1);
        match step {
            Step::Hub(hub) => {
                let _ = writeln!(
                    out,
                    "{indent}subgraph cluster_{} {{\n{indent}  label=\"hub {hub}\";",
                    id(hub)
                );
                let _ = writeln!(
                    out,
                    "{indent}  hub_{} [label=\"{hub} events\", shape=cylinder];",
                    id(hub)
                );
                for service in topology.services.iter().filter(|s| s.hub() == hub) {
                    let _ = writeln!(
                        out,
                        "{indent}  {} [label=\"{}\", shape=box];",
                        id(&service.name()),
                        service.name()
                    );
                }
                let _ = writeln!(out, "{indent}}}");
            }
            Step::Enter(system) => {
                let _ = writeln!(
                    out,
                    "{indent}subgraph cluster_system_{} {{\n{indent}  label=\"system {system}\";\n{indent}  style=dashed;",
                    id(system)
                );
            }
            Step::Leave => {
                let _ = writeln!(out, "{indent}}}");
            }
        }
    });
    for bridge in &topology.bridges {
        let c = &bridge.config;

        let _ = writeln!(
            out,
            "  hub_{} -> hub_{} [label=\"bridge {}\\n{}\"];",
            id(&c.source.name),
            id(&c.target.name),
            c.name,
            route_labels(bridge).join("\\n")
        );
    }
    out.push_str("}\n");
    out
}
