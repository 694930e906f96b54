//! A system running locally, as `fractal up` describes it in `<state>/running.json` for the
//! tools that drive or observe it (`fractal demo`, `tail`, `publish`, `faults`, a subsystem's
//! demo program).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where everything of a local run is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningSystem {
    /// The topology's name.
    pub name: String,
    /// The process of `fractal up` that runs it.
    pub pid: u32,
    /// Each hub's client URL, by hub name.
    pub hubs: BTreeMap<String, String>,
    /// Each hub's client URLs, one per node, by hub name.
    #[serde(default)]
    pub nodes: BTreeMap<String, Vec<String>>,
    /// The TLS settings of the operator's tools, when the hubs require TLS.
    #[serde(default)]
    pub tls: Option<fractal::hub::TlsConfig>,
    /// The nkey seed file of the operator's tools, when the hubs require credentials.
    #[serde(default)]
    pub credential: Option<std::path::PathBuf>,
    /// Each hub's monitoring endpoints (`http://127.0.0.1:8222`), one per node, by hub name.
    #[serde(default)]
    pub monitors: BTreeMap<String, Vec<String>>,
    /// Each service by `<subsystem>/<service>`.
    pub services: BTreeMap<String, RunningProcess>,
    /// Each bridge by name.
    pub bridges: BTreeMap<String, RunningProcess>,
}

/// One service or bridge process of a local run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningProcess {
    /// The hub it belongs to (a bridge: its source).
    pub hub: String,
    /// Its gRPC endpoint (`http://127.0.0.1:50061`), if it serves one.
    pub grpc: Option<String>,
    /// Its admin endpoint (`127.0.0.1:9161`).
    pub admin: String,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: String,
    /// How often it was started again after exiting.
    #[serde(default)]
    pub restarts: u32,
    /// `running`, `restarting`, `crash-looping` or `stopped` (exited, not restarted).
    #[serde(default)]
    pub state: String,
}

/// A running system's description could not be read, or lacks what was asked of it.
#[derive(Debug, thiserror::Error)]
pub enum RunningError {
    /// The file cannot be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a running system's description.
    #[error("`{path}` is not a running system: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// No service of that name serves gRPC.
    #[error("the running system has no gRPC service `{0}`")]
    NoService(String),
}

impl RunningSystem {
    /// Reads the description at `path`.
    pub fn load(path: &Path) -> Result<RunningSystem, RunningError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunningError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| RunningError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// How the operator's tools connect to `hub`: every node, with TLS and the operator's
    /// credential if the run uses them.
    pub fn hub_config(&self, hub: &str) -> Option<fractal::HubConfig> {
        let urls = self
            .nodes
            .get(hub)
            .cloned()
            .or_else(|| self.hubs.get(hub).map(|url| vec![url.clone()]))?;
        let mut config = fractal::HubConfig::local(hub, "");
        config.urls = urls;
        config.tls = self.tls.clone();
        if let Some(seed_file) = &self.credential {
            config.auth = fractal::hub::AuthConfig::Nkey {
                seed: None,
                seed_file: Some(seed_file.clone()),
            };
        }
        Some(config)
    }

    /// The gRPC endpoint of `service` (`restaurant/kitchen`).
    pub fn grpc(&self, service: &str) -> Result<&str, RunningError> {
        self.services
            .get(service)
            .and_then(|s| s.grpc.as_deref())
            .ok_or_else(|| RunningError::NoService(service.to_owned()))
    }
}

/// Whether `GET http://<addr><path>` answers 200 within two seconds: how the tools see that a
/// hub node is healthy (`/healthz` on its monitoring port) or a process ready (`/readyz` on its
/// admin port).
pub async fn answers_ok(addr: &str, path: &str) -> bool {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        // Local endpoints: no proxy from the environment stands in between.
        reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .unwrap_or_default()
    });
    let addr = addr.trim_start_matches("http://");
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}
