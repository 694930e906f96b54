//! The Fractal test kit: real hubs for tests, and helpers to drive and observe them.
//!
//! [`NatsServer::start`] runs a real `nats-server` with JetStream on free ports and a
//! temporary store, and removes both when dropped, so tests run in parallel. The binary is
//! found through `NATS_SERVER_BIN`, then `PATH`, then the copy `scripts/test` installs
//! under `.fractal/tools`. A missing or too old server fails the test with instructions; it
//! never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A test kit fails loudly.

use fractal_process::Spawn;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fractal::{Hub, HubConfig, NewEvent, Published, Publisher};
use futures::StreamExt as _;

/// The `nats-server` binary to run, found once per test process
/// ([`fractal_process::find_nats_server`]).
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        fractal_process::find_nats_server(&repository).unwrap_or_else(|e| panic!("{e}."))
    })
}

/// A free TCP port on the loopback interface, for a process to listen on.
///
/// Chosen at random below Linux's ephemeral range (32768 and up), where the system never puts
/// the local end of an outgoing connection: a port the system handed out (`bind` to port 0)
/// could be taken by one of the many connections the tests open between choosing it and the
/// process listening on it, and a client would then reach the wrong server.
///
/// A port is handed out once per test process: two servers asking at once (a cluster's nodes,
/// which list each other's ports) never get the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let draw = RandomState::new()
            .hash_one((DRAWS.fetch_add(1, Ordering::Relaxed), std::process::id()));
        let port = 10_000 + (draw % 22_000) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    drop(given);
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Options for a test server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// JetStream domain, for hubs joined by leafnodes.
    pub domain: Option<String>,
    /// More server configuration, appended verbatim (leafnodes, accounts...).
    pub extra: String,
    /// fsync before acknowledging each write (`sync_interval: always`), instead of NATS's
    /// periodic sync.
    pub sync_always: bool,
}

/// The `sync_interval` line of a `jetstream` block, if `always`.
fn sync_line(always: bool) -> &'static str {
    if always {
        "  sync_interval: always\n"
    } else {
        ""
    }
}

/// A real nats-server with JetStream, on free ports with a temporary store.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<fractal_process::Process>,
    port: u16,
    monitor_port: u16,
    dir: tempfile::TempDir,
    options: ServerOptions,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    pub fn start() -> NatsServer {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` and waits until JetStream is ready.
    pub fn start_with(options: ServerOptions) -> NatsServer {
        let mut dir = tempfile::tempdir().expect("a temporary directory");
        let mut last_error = String::new();
        // A free port can be taken by another test between choosing and binding it: retry.
        for _ in 0..5 {
            let mut server = NatsServer {
                child: None,
                port: free_port(),
                monitor_port: free_port(),
                dir,
                options: options.clone(),
            };
            match server.launch() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    dir = std::mem::replace(
                        &mut server.dir,
                        tempfile::tempdir().expect("a temporary directory"),
                    );
                }
            }
        }
        panic!("nats-server did not start: {last_error}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let store = self.dir.path().join("store");
        let domain = self
            .options
            .domain
            .as_ref()
            .map(|d| format!("domain: {d}\n"))
            .unwrap_or_default();
        let config = format!(
            "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n{}  {domain}}}\n{}\n",
            self.port,
            self.monitor_port,
            store,
            sync_line(self.options.sync_always),
            self.options.extra
        );
        self.child = Some(spawn_server(self.dir.path(), "server", &config)?);
        if let Err(e) = wait_healthy(
            &mut self.child,
            self.monitor_port,
            "/healthz?js-enabled-only=true",
        ) {
            self.kill();
            return Err(format!("{e}: {}", self.log()));
        }
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(fractal_process::Process::id)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A hub configuration named `name` pointing at this server.
    pub fn hub_config(&self, name: &str) -> HubConfig {
        HubConfig::local(name, &self.url())
    }

    /// Connects to this server as hub `name` and provisions its streams.
    pub async fn hub(&self, name: &str) -> Hub {
        let hub = Hub::connect(&self.hub_config(name))
            .await
            .expect("connects to the test hub");
        hub.provision().await.expect("provisions the test hub");
        hub
    }

    /// Kills the server (as a crash would), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same ports with the same store.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                // The old process may hold the port for a moment.
                Err(e) if Instant::now() > deadline => panic!("nats-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `config` to `<dir>/<name>.conf` and starts a server with it, its output in
/// `<dir>/<name>.log`.
fn spawn_server(dir: &Path, name: &str, config: &str) -> Result<fractal_process::Process, String> {
    let config_path = dir.join(format!("{name}.conf"));
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = dir.join(format!("{name}.log"));
    Spawn::new(nats_server_binary(), &log)
        .args([std::ffi::OsStr::new("-c"), config_path.as_os_str()])
        .start()
        .map_err(|e| e.to_string())
}

/// Waits up to 20 s until the server answers 200 at `health` on its monitoring port.
fn wait_healthy(
    child: &mut Option<fractal_process::Process>,
    monitor_port: u16,
    health: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(running) = child
            && let Some(status) = running.exited()
        {
            *child = None;
            return Err(format!("exited with {status}"));
        }
        if monitor_get(monitor_port, health).is_some_and(|(code, _)| code == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("not healthy after 20 s".into())
}

/// The status and body of `GET path` on a server's monitoring port.
fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Servers a client can be pointed at: one [`NatsServer`] or a [`NatsCluster`].
pub trait Servers {
    /// Every client URL.
    fn urls(&self) -> Vec<String>;
    /// The replicas of streams and views on these servers.
    fn replicas(&self) -> usize;
}

impl Servers for NatsServer {
    fn urls(&self) -> Vec<String> {
        vec![self.url()]
    }
    fn replicas(&self) -> usize {
        1
    }
}

/// A JetStream cluster of real servers on free ports, each with its own temporary store, as
/// a hub of several nodes runs. Nodes can be killed (as a crash would) and started again.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
    sync_always: bool,
}

#[derive(Debug)]
struct ClusterNode {
    name: String,
    child: Option<fractal_process::Process>,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
}

impl NatsCluster {
    /// Starts `size` servers as one cluster and waits until every one is healthy with
    /// JetStream current (a meta leader elected).
    pub fn start(size: usize) -> NatsCluster {
        Self::start_with(size, false)
    }

    /// Starts `size` servers as one cluster, with `sync_interval: always` if `sync_always`.
    pub fn start_with(size: usize, sync_always: bool) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cluster_name = format!("c{}", free_port());
        let nodes: Vec<ClusterNode> = (0..size)
            .map(|i| ClusterNode {
                name: format!("{cluster_name}-{i}"),
                child: None,
                port: free_port(),
                monitor_port: free_port(),
                cluster_port: free_port(),
            })
            .collect();
        let mut cluster = NatsCluster {
            nodes,
            dir,
            sync_always,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait(i);
        }
        cluster
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let cluster_name = node.name.rsplit_once('-').map_or("c", |(c, _)| c);
        format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n{}}}\ncluster {{\n  name: {cluster_name}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            node.name,
            node.port,
            node.monitor_port,
            self.dir.path().join(&node.name),
            sync_line(self.sync_always),
            node.cluster_port,
            routes.join(", ")
        )
    }

    fn spawn(&mut self, i: usize) {
        let config = self.config(i);
        let child = spawn_server(self.dir.path(), &self.nodes[i].name, &config)
            .unwrap_or_else(|e| panic!("nats-server {} does not start: {e}", self.nodes[i].name));
        self.nodes[i].child = Some(child);
    }

    fn wait(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Err(e) = wait_healthy(&mut node.child, node.monitor_port, "/healthz") {
            let name = node.name.clone();
            panic!("cluster node {name} is not healthy: {e}: {}", self.log(i));
        }
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }

    /// How many nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// A hub configuration named `name` listing every node, its streams replicated on up to
    /// three of them.
    pub fn hub_config(&self, name: &str) -> HubConfig {
        let mut config = HubConfig::local(name, "");
        config.urls = self.urls();
        config.events.replicas = self.replicas();
        config.faults.replicas = self.replicas();
        config
    }

    /// Connects as hub `name` and provisions its streams.
    pub async fn hub(&self, name: &str) -> Hub {
        let hub = Hub::connect(&self.hub_config(name))
            .await
            .expect("connects to the test cluster");
        eventually(Duration::from_secs(20), "the cluster's streams", || async {
            hub.provision().await.ok()
        })
        .await;
        hub
    }

    /// The node that leads `stream` now, as the nodes that answer see it.
    pub fn leader_of(&self, stream: &str) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some((200, body)) = monitor_get(node.monitor_port, "/jsz?streams=true") else {
                continue;
            };
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned));
            if let Some(leader) = leader {
                return self.nodes.iter().position(|n| n.name == leader);
            }
        }
        None
    }

    /// How many messages node `i` holds of `stream` (its own replica).
    pub fn messages_on(&self, i: usize, stream: &str) -> Option<u64> {
        let (_, body) = monitor_get(self.nodes[i].monitor_port, "/jsz?streams=true")?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == stream)?["state"]["messages"]
            .as_u64()
    }

    /// Kills node `i` with SIGKILL, as a crash would, keeping its store.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill();
        }
    }

    /// Starts node `i` again on its ports with its store, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait(i);
    }
}

impl Servers for NatsCluster {
    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }
    fn replicas(&self) -> usize {
        self.nodes.len().min(3)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, and returns that value; panics naming
/// `what` if `timeout` passes first.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes simulated upstream events into `hub`, as if another subsystem (through a bridge)
/// or another service had produced them.
pub async fn simulate(hub: &Hub, events: impl IntoIterator<Item = NewEvent>) -> Vec<Published> {
    Publisher::new(hub, "testkit/simulator")
        .publish_all(events)
        .await
        .expect("simulated events are stored")
}

/// Every message currently in `stream` on `hub`, in order.
pub async fn stream_messages(hub: &Hub, stream: &str) -> Vec<async_nats::Message> {
    let js = hub.jetstream();
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    let count = stream.info().await.expect("stream info").state.messages as usize;
    if count == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream read in time")
            .expect("stream open")
            .expect("message");
        out.push(message.message);
    }
    out
}

/// A service running in the test's process against a test hub, started as its binary would
/// start it (hub connected, streams provisioned, admin endpoint up). Stops when dropped.
#[derive(Debug)]
pub struct RunningService {
    grpc: String,
    shutdown: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningService {
    /// Starts `subsystem`/`service` on `server` as hub `hub`, running `body` (a subsystem's
    /// `run`), with its gRPC endpoint on a free port.
    pub async fn start<F, Fut>(
        server: &NatsServer,
        hub: &str,
        subsystem: &str,
        service: &str,
        body: F,
    ) -> RunningService
    where
        F: FnOnce(fractal::service::Service) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), fractal::service::ServiceError>>
            + Send
            + 'static,
    {
        let grpc = format!("127.0.0.1:{}", free_port());
        let config: fractal::service::ServiceConfig = fractal::config::from_toml(&format!(
            r#"
            subsystem = "{subsystem}"
            service = "{service}"
            hub = {{ name = "{hub}", urls = ["{url}"] }}
            grpc = {{ listen = "{grpc}" }}
            admin = {{ listen = "127.0.0.1:0" }}
            consumer = {{ retry_initial_ms = 50, retry_max_ms = 500 }}
            "#,
            url = server.url(),
        ))
        .expect("a valid service config");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let started = fractal::service::Service::start(config, shutdown.clone())
            .await
            .expect("the service starts")
            .expect("not shut down");
        let name = format!("{subsystem}/{service}");
        let task = tokio::spawn(async move {
            if let Err(e) = body(started).await {
                panic!("service {name} failed: {e}");
            }
        });
        RunningService {
            grpc: format!("http://{grpc}"),
            shutdown,
            task: Some(task),
        }
    }

    /// A gRPC channel to the service, once it listens.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint =
            tonic::transport::Endpoint::from_shared(self.grpc.clone()).expect("a valid endpoint");
        eventually(Duration::from_secs(10), "the gRPC server to listen", || {
            let endpoint = endpoint.clone();
            async move { endpoint.connect().await.ok() }
        })
        .await
    }

    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the service stopped cleanly");
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every event of `event_type` (internal or external) stored on `hub` so far, decoded.
pub async fn events_of_type(hub: &Hub, event_type: &str) -> Vec<fractal::Event> {
    stream_messages(hub, hub.events_stream())
        .await
        .into_iter()
        .filter_map(|m| fractal::Event::decode(&m.subject, m.headers.as_ref(), m.payload).ok())
        .filter(|e| e.event_type == event_type)
        .collect()
}

/// Waits until `hub` holds at least `count` events of `event_type`, and returns them.
pub async fn wait_for_events(hub: &Hub, event_type: &str, count: usize) -> Vec<fractal::Event> {
    eventually(
        Duration::from_secs(20),
        &format!("{count} `{event_type}` events on hub `{}`", hub.name()),
        || async {
            let events = events_of_type(hub, event_type).await;
            (events.len() >= count).then_some(events)
        },
    )
    .await
}

/// Every fault recorded on `hub` so far, decoded.
pub async fn faults(hub: &Hub) -> Vec<fractal::proto::Fault> {
    use prost::Message as _;
    stream_messages(hub, hub.faults_stream())
        .await
        .into_iter()
        .map(|m| fractal::proto::Fault::decode(m.payload).expect("a fault decodes"))
        .collect()
}

/// Waits until the durable consumer `durable` on `hub`'s event stream has handled everything
/// stored so far (nothing pending, nothing awaiting acknowledgement).
pub async fn wait_until_consumed(hub: &Hub, durable: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("consumer `{durable}` to catch up"),
        || async {
            let stream = hub.jetstream().get_stream(hub.events_stream()).await.ok()?;
            let info = stream.consumer_info(durable).await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await
}

/// A program of this workspace (`restaurant`, `fractal-bridge`…), built next to the test.
/// `cargo test --workspace` (what `scripts/test` runs) builds every program; testing one
/// package alone uses the programs of the last workspace build. A missing one fails the test
/// with how to build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let binary = dir.join(name);
    assert!(
        binary.is_file(),
        "`{}` is not built; build every program first with `cargo build --workspace --bins` \
         (scripts/test does)",
        binary.display()
    );
    binary
}

/// A child process of the test, its output kept in a log file; terminated gracefully by
/// [`Process::terminate`] and killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: fractal_process::Process,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and extra environment `envs`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let child = Spawn::new(program, &log)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Process {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.child.is_running().then(|| self.child.id())
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Sends SIGTERM and waits up to 10 s for a clean exit (then kills it); returns whether it
    /// exited successfully.
    pub fn terminate(&mut self) -> bool {
        match self.child.terminate(Duration::from_secs(10)) {
            Some(status) => status.success(),
            None => {
                eprintln!("{} did not stop on SIGTERM; killed it", self.name);
                false
            }
        }
    }
}

/// The whole HTTP/1.1 response (status line, headers, body) to `GET path` on `addr`, as an
/// operator's probe sees an admin endpoint; `None` if nothing answers.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The value of the first line of Prometheus text `metrics` that starts with `prefix`.
pub fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A span an [`OtlpReceiver`] got: its name, trace id, attributes, and its resource's
/// attributes (`service.name`, `k8s.pod.name`, …).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// Its trace id.
    pub trace_id: Vec<u8>,
    /// Its attributes, as text.
    pub attributes: std::collections::HashMap<String, String>,
    /// Its resource's attributes, as text.
    pub resource: std::collections::HashMap<String, String>,
}

impl ReceivedSpan {
    /// The `service.name` of its resource.
    pub fn service(&self) -> &str {
        self.resource.get("service.name").map_or("", String::as_str)
    }
}

/// An OTLP/gRPC trace receiver in the test, as Jaeger or a collector would run it.
#[derive(Debug, Clone, Default)]
pub struct OtlpReceiver {
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Starts one on a free loopback port; returns it and its endpoint (`http://…`).
    pub async fn start() -> (OtlpReceiver, String) {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let receiver = OtlpReceiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, endpoint)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("the spans").clone()
    }
}

fn attributes(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> std::collections::HashMap<String, String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for OtlpReceiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().expect("the spans");
        for resource_spans in request.into_inner().resource_spans {
            let resource = attributes(
                resource_spans
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or_default(),
            );
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        name: span.name,
                        trace_id: span.trace_id,
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse {
                partial_success: None,
            },
        ))
    }
}
