//! Running the bridge program against real hubs.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use fractal_process::{Process, Spawn};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use fractal::proto::Header;
use fractal::{Event, Hub, NewEvent};
use fractal_testkit::{Servers, eventually, free_port, stream_messages};

/// A bridge process, killable and restartable.
pub struct Bridge {
    child: Option<Process>,
    config: PathBuf,
    log: PathBuf,
    pub admin_port: u16,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// The `[[routes]]` and settings of a bridge config, after the hubs.
pub fn config<S: Servers, T: Servers>(
    name: &str,
    source: (&str, &S),
    target: (&str, &T),
    rest: &str,
    admin_port: u16,
) -> String {
    format!(
        "name = \"{name}\"\n\n{}\n{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n{rest}\n",
        hub("source", source.0, source.1),
        hub("target", target.0, target.1),
    )
}

/// The `[source]` or `[target]` table of a hub on `servers`.
fn hub(table: &str, name: &str, servers: &impl Servers) -> String {
    let urls: Vec<String> = servers.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let replicas = servers.replicas();
    format!(
        "[{table}]\nname = \"{name}\"\nurls = [{}]\nevents = {{ replicas = {replicas} }}\nfaults = {{ replicas = {replicas} }}\n",
        urls.join(", ")
    )
}

/// A route relaying `types` that must carry `fractal.platform.v1.Header`.
pub fn route(name: &str, types: &[&str]) -> String {
    let types: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\ntypes = [{}]\ncontract = \"fractal.platform.v1.Header\"\n",
        types.join(", ")
    )
}

impl Bridge {
    /// Starts `fractal-bridge` from `source` to `target` with `rest` (routes, relay settings).
    pub fn start<S: Servers, T: Servers>(
        name: &str,
        source: (&str, &S),
        target: (&str, &T),
        rest: &str,
    ) -> Bridge {
        Self::start_with_env(name, source, target, rest, &[])
    }

    pub fn start_with_env<S: Servers, T: Servers>(
        name: &str,
        source: (&str, &S),
        target: (&str, &T),
        rest: &str,
        env: &[(&str, &str)],
    ) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let config = dir.path().join("bridge.toml");
        std::fs::write(
            &config,
            self::config(name, source, target, rest, admin_port),
        )
        .unwrap();
        let mut bridge = Bridge {
            child: None,
            log: dir.path().join("bridge.log"),
            config,
            admin_port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        bridge.spawn();
        bridge
    }

    fn spawn(&mut self) {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_fractal-bridge"));
        let child = Spawn::new(program, &self.log)
            .args([std::ffi::OsStr::new("--config"), self.config.as_os_str()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs([("RUST_LOG", "info")])
            .start()
            .expect("fractal-bridge starts");
        self.child = Some(child);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM, and wait (up to 30 s) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child
            .terminate(Duration::from_secs(30))
            .expect("exits on SIGTERM")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Peak resident memory of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the admin endpoint.
    pub async fn admin(&self, path: &str) -> Option<String> {
        fractal_testkit::http_get(("127.0.0.1", self.admin_port), path).await
    }

    /// The value of a metric line starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        fractal_testkit::metric(&self.admin("/metrics").await?, prefix)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An external event of `event_type` for key `key` numbered `n`.
pub fn numbered(event_type: &str, key: &str, n: usize) -> NewEvent {
    let payload = Header {
        name: key.into(),
        value: n.to_string(),
    };
    NewEvent::external(event_type, key, &payload)
}

/// Every event in the hub's event stream, decoded, in stream order.
pub async fn events(hub: &Hub) -> Vec<Event> {
    stream_messages(hub, hub.events_stream())
        .await
        .into_iter()
        .map(|m| Event::decode(&m.subject, m.headers.as_ref(), m.payload).expect("well-formed"))
        .collect()
}

/// Waits until the hub's event stream holds `count` messages.
pub async fn wait_for_count(hub: &Hub, count: u64, timeout: Duration) {
    let what = format!("{count} events on hub `{}`", hub.name());
    eventually(timeout, &what, || async {
        let mut stream = hub.jetstream().get_stream(hub.events_stream()).await.ok()?;
        let have = stream.info().await.ok()?.state.messages;
        (have >= count).then_some(())
    })
    .await;
}

/// Asserts that in `events` the numbers of each key increase.
pub fn assert_per_key_order(events: &[Event]) {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let n: usize = event.payload::<Header>().unwrap().value.parse().unwrap();
        if let Some(previous) = last.insert(&event.key, n) {
            assert!(previous < n, "key {} has {n} after {previous}", event.key);
        }
    }
}
