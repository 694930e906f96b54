//! A hub's servers: each node's `nats-server` configuration, as `fractal up` runs it and
//! `fractal hub config` prints it. One node is a plain JetStream server; three or five form a
//! cluster with routes to each other and a stable `server_name` each.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::tls::Certificates;
use crate::topology::{HubSpec, Sync};

/// One server of a hub, on this machine.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Whether it requires TLS.
    pub(crate) tls: bool,
    /// Its `server_name`: the hub's name, or `<hub>-<i>` in a cluster.
    pub(crate) name: String,
    pub(crate) client: u16,
    pub(crate) monitor: u16,
    pub(crate) cluster: u16,
}

impl Node {
    /// Its client URL.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    /// Its monitoring URL.
    pub(crate) fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor)
    }
}

/// The nodes of hub `name`, every port shifted by `offset`, requiring TLS if `tls`.
pub(crate) fn nodes(
    name: &str,
    spec: &HubSpec,
    offset: u16,
    tls: bool,
) -> anyhow::Result<Vec<Node>> {
    (0..spec.nodes)
        .map(|i| {
            let [client, monitor, cluster] = spec.node_ports(i).map(|port| {
                port.checked_add(offset).with_context(|| {
                    format!("hub `{name}`: port {port} + offset {offset} is past 65535")
                })
            });
            Ok(Node {
                tls,
                name: if spec.nodes == 1 {
                    name.to_owned()
                } else {
                    format!("{name}-{i}")
                },
                client: client?,
                monitor: monitor?,
                cluster: cluster?,
            })
        })
        .collect()
}

/// The configuration of node `i` of hub `name`, its store in `store`; with `tls`, clients and
/// routes must present a certificate of its authority (mutual TLS); with `authorization`
/// (from [`crate::access::authorization`]), clients must present one of its nkeys.
pub(crate) fn server_config(
    name: &str,
    spec: &HubSpec,
    nodes: &[Node],
    i: usize,
    store: &Path,
    tls: Option<&Certificates>,
    authorization: Option<&str>,
) -> String {
    let node = &nodes[i];
    let mut conf = format!(
        "# Hub `{name}`, node {} of {}: generated from the topology.\n\
         server_name: {}\n\
         listen: 127.0.0.1:{}\n\
         http: 127.0.0.1:{}\n\
         jetstream {{\n  store_dir: {:?}\n",
        i + 1,
        nodes.len(),
        node.name,
        node.client,
        node.monitor,
        store.display().to_string()
    );
    if spec.sync == Sync::Always {
        conf.push_str("  # fsync before acknowledging each write.\n  sync_interval: always\n");
    }
    conf.push_str("}\n");
    let tls_block = |indent: &str| match tls {
        Some(certificates) => format!(
            "{indent}tls {{\n{indent}  cert_file: {:?}\n{indent}  key_file: {:?}\n{indent}  ca_file: {:?}\n{indent}  verify: true\n{indent}  timeout: 2\n{indent}}}\n",
            certificates.cert(&node.name).display().to_string(),
            certificates.key(&node.name).display().to_string(),
            certificates.ca().display().to_string(),
        ),
        None => String::new(),
    };
    conf.push_str(&tls_block(""));
    if let Some(authorization) = authorization {
        conf.push_str(authorization);
    }
    if nodes.len() > 1 {
        let _ = write!(
            conf,
            "cluster {{\n  name: {name}\n  listen: 127.0.0.1:{}\n{}  routes: [\n",
            node.cluster,
            tls_block("  ")
        );
        for other in nodes {
            let _ = writeln!(conf, "    nats://127.0.0.1:{}", other.cluster);
        }
        conf.push_str("  ]\n}\n");
    }
    conf
}

/// Creates or updates the hub's streams and creates its `views`, retrying while the hub cannot
/// answer yet (a new cluster settling, a node starting) for up to `timeout`; `alive` is asked
/// between attempts and its error ends the wait.
pub(crate) async fn provision(
    config: &fractal::HubConfig,
    views: &[&str],
    timeout: std::time::Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = async {
            let hub = fractal::Hub::connect(config).await?;
            hub.provision().await?;
            for view in views {
                fractal::view::provision(&hub, view).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.context("cannot provision the hub's streams and views"));
            }
            Err(_) => {
                alive()?;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16, nodes: usize, sync: Sync) -> HubSpec {
        HubSpec {
            port,
            monitor: None,
            cluster: None,
            nodes,
            sync,
            streams: Default::default(),
        }
    }

    #[test]
    fn a_three_node_hub_is_a_cluster_with_routes_to_every_node() {
        let spec = spec(4224, 3, Sync::Always);
        let nodes = nodes("ordering", &spec, 10, false).unwrap();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["ordering-0", "ordering-1", "ordering-2"]);
        assert_eq!(
            nodes.iter().map(|n| n.client).collect::<Vec<_>>(),
            [4234, 4334, 4434]
        );
        let conf = server_config("ordering", &spec, &nodes, 1, Path::new("/s"), None, None);
        for line in [
            "server_name: ordering-1",
            "listen: 127.0.0.1:4334",
            "http: 127.0.0.1:8334",
            "sync_interval: always",
            "listen: 127.0.0.1:6334",
            "nats://127.0.0.1:6234",
            "nats://127.0.0.1:6434",
        ] {
            assert!(conf.contains(line), "{line} in\n{conf}");
        }
    }

    #[test]
    fn one_node_has_no_cluster_and_keeps_nats_default_sync() {
        let spec = spec(4222, 1, Sync::Default);
        let nodes = nodes("system", &spec, 0, false).unwrap();
        let conf = server_config("system", &spec, &nodes, 0, Path::new("/s"), None, None);
        assert!(conf.contains("server_name: system\n"), "{conf}");
        assert!(!conf.contains("cluster"), "{conf}");
        assert!(!conf.contains("sync_interval"), "{conf}");
    }
}
