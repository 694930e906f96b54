//! What the programs say of their services (`<program> --describe`: the external contracts
//! each publishes and consumes, as declared in code and held to it at run time), compared with
//! what the topology lists. The topology keeps its lists, read without building anything and
//! granting each service its permissions; `fractal check` reports where they and the code
//! disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fractal::config::Problems;
use fractal::contract::Described;
use fractal::service::DescribedService;
use serde::Deserialize;

use crate::topology::Topology;

/// A program's `--describe` output.
#[derive(Debug, Deserialize)]
struct Description {
    program: String,
    services: Vec<DescribedService>,
}

/// Runs `<programs>/<program> --describe` for every program the topology names.
fn describe(program: &str, programs: &Path) -> Result<Description, String> {
    let path = programs.join(program);
    let output = std::process::Command::new(&path)
        .arg("--describe")
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} --describe to compare its contracts: {e} (build the workspace first)",
                path.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "{} --describe failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let description: Description = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{} --describe printed no description: {e}", path.display()))?;
    if description.program != program {
        return Err(format!(
            "{} describes itself as `{}`",
            path.display(),
            description.program
        ));
    }
    Ok(description)
}

/// Compares each service's `publishes` and `consumes` in the topology with what its program
/// declares, and each bridge route's contract with the message its producers declare.
pub(crate) fn compare(topology: &Topology, programs: &Path) -> Problems {
    let mut problems = Problems::default();
    let mut descriptions: BTreeMap<&str, Result<Description, String>> = BTreeMap::new();
    // The message each external type is declared with on each hub, and by whom.
    let mut declared: BTreeMap<(String, String), BTreeSet<(String, String)>> = BTreeMap::new();
    for service in &topology.services {
        let at = &service.at;
        let program = service.spec.program.as_str();
        let description = descriptions
            .entry(program)
            .or_insert_with(|| describe(program, programs));
        let description = match description {
            Ok(description) => description,
            Err(e) => {
                problems.add(format!("{at}: program"), e.clone());
                continue;
            }
        };
        let name = &service.config.service;
        let Some(described) = description.services.iter().find(|s| &s.service == name) else {
            let names: Vec<&str> = description
                .services
                .iter()
                .map(|s| s.service.as_str())
                .collect();
            problems.add(
                format!("{at}: program"),
                format!(
                    "`{program}` has no service `{name}` (it has {})",
                    names.join(", ")
                ),
            );
            continue;
        };
        for (key, listed, in_code) in [
            ("publishes", &service.spec.publishes, &described.publishes),
            ("consumes", &service.spec.consumes, &described.consumes),
        ] {
            compare_lists(
                &mut problems,
                &format!("{at}: {key}"),
                program,
                listed,
                in_code,
            );
        }
        for contract in &described.publishes {
            declared
                .entry((service.hub().to_owned(), contract.event_type.clone()))
                .or_default()
                .insert((service.name(), contract.message.clone()));
        }
    }
    for bridge in &topology.bridges {
        for (j, route) in bridge.config.routes.iter().enumerate() {
            for ((hub, event_type), producers) in &declared {
                let read = *hub == bridge.config.source.name
                    && route
                        .types
                        .iter()
                        .any(|p| crate::topology::matches(p, event_type));
                if !read {
                    continue;
                }
                for (producer, message) in producers {
                    if *message != route.contract {
                        problems.add(
                            format!("{}: routes[{j}].contract", bridge.at),
                            format!(
                                "`{}`, but {producer} publishes `{event_type}` carrying `{message}`",
                                route.contract
                            ),
                        );
                    }
                }
            }
        }
    }
    problems
}

/// Reports each event type the topology lists and the code does not declare, and the other way
/// round.
fn compare_lists(
    problems: &mut Problems,
    at: &str,
    program: &str,
    listed: &[String],
    in_code: &[Described],
) {
    let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    let external: BTreeMap<&str, &str> = in_code
        .iter()
        .filter(|c| c.scope == "external")
        .map(|c| (c.event_type.as_str(), c.message.as_str()))
        .collect();
    for (event_type, message) in &external {
        if !listed.contains(event_type) {
            problems.add(
                at,
                format!(
                    "`{program}` declares `{event_type}` ({message}), which the topology does not list"
                ),
            );
        }
    }
    for event_type in listed {
        if !external.contains_key(event_type) {
            problems.add(
                at,
                format!("the topology lists `{event_type}`, which `{program}` does not declare"),
            );
        }
    }
}
