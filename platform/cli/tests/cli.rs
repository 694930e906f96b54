//! The `fractal` command as users run it, against real hubs and the shipped topology.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fractal::{Consumer, ConsumerConfig, HandlerError, NewEvent};
use fractal_testkit::{NatsServer, eventually, faults, simulate};
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fractal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args(args)
        .env("NATS_SERVER_BIN", fractal_testkit::nats_server_binary())
        .output()
        .expect("fractal runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn shipped() -> String {
    root().join("fractal.toml").display().to_string()
}

#[test]
fn check_passes_on_the_shipped_topology() {
    let output = fractal(&["check", "--topology", &shipped()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("4 hubs, 9 services and 6 bridges is valid"));
}

#[test]
fn check_lists_every_problem_of_a_broken_topology() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| std::fs::write(dir.path().join(name), content).unwrap();
    write(
        "service.toml",
        "subsystem = \"alpha\"\nservice = \"svc\"\nhub = { name = \"gamma\", urls = [\"nats://127.0.0.1:5001\"] }\nadmin = { listen = \"127.0.0.1:5002\" }\n",
    );
    let proto = root().join("proto").display().to_string();
    write(
        "bridge.toml",
        &format!(
            "name = \"a-to-b\"\ncontracts = \"{proto}\"\nsource = {{ name = \"alpha\", urls = [\"nats://127.0.0.1:5001\"] }}\ntarget = {{ name = \"beta\", urls = [\"nats://127.0.0.1:5001\"] }}\nadmin = {{ listen = \"127.0.0.1:5003\" }}\n[[routes]]\nname = \"orders\"\ntypes = [\"order.placed\"]\ncontract = \"food.contracts.v1.Ordr\"\n"
        ),
    );
    write(
        "fractal.toml",
        "name = \"broken\"\n[hubs.alpha]\nport = 5001\nnodes = 2\n[hubs.beta]\nport = 5001\nstreams = { replicas = 3 }\n[[services]]\nprogram = \"alpha\"\nconfig = \"service.toml\"\ncolour = \"red\"\n[[bridges]]\nconfig = \"bridge.toml\"\n",
    );
    let topology = dir.path().join("fractal.toml").display().to_string();
    let output = fractal(&["check", "--topology", &topology]);
    assert!(!output.status.success());
    // The unknown key stops the topology before its files are read, with the other problems
    // of the file itself: a cluster of two, more replicas than nodes.
    for problem in [
        "services.0.colour: unknown key",
        "hubs.alpha.nodes: 2 nodes: a hub runs as 1 server or a cluster of 3 or 5",
        "hubs.beta.streams.replicas: 3 replicas need at least 3 nodes; the hub has 1",
    ] {
        assert!(
            text(&output).contains(problem),
            "{problem} in {}",
            text(&output)
        );
    }

    write(
        "good-contract.toml",
        &format!(
            "name = \"a-to-b\"\ncontracts = \"{proto}\"\nsource = {{ name = \"alpha\", urls = [\"nats://127.0.0.1:5001\"] }}\ntarget = {{ name = \"beta\", urls = [\"nats://127.0.0.1:5009\"] }}\nadmin = {{ listen = \"127.0.0.1:5004\" }}\n[[routes]]\nname = \"orders\"\ntypes = [\"order.placed\"]\ncontract = \"food.contracts.v1.Order\"\n"
        ),
    );
    write(
        "no-contracts.toml",
        "name = \"b-to-a\"\ncontracts = \"missing.pb\"\nsource = { name = \"beta\", urls = [\"nats://127.0.0.1:5001\"] }\ntarget = { name = \"alpha\", urls = [\"nats://127.0.0.1:5001\"] }\nadmin = { listen = \"127.0.0.1:5005\" }\n[[routes]]\nname = \"menus\"\ntypes = [\"menu.changed\"]\ncontract = \"food.contracts.v1.Menu\"\n",
    );
    write(
        "fractal.toml",
        "name = \"broken\"\n[hubs.alpha]\nport = 5001\n[hubs.beta]\nport = 5001\n[[services]]\nprogram = \"alpha\"\nconfig = \"service.toml\"\n[[bridges]]\nconfig = \"bridge.toml\"\n[[bridges]]\nconfig = \"good-contract.toml\"\n[[bridges]]\nconfig = \"no-contracts.toml\"\n",
    );
    let output = fractal(&["check", "--topology", &topology]);
    assert!(!output.status.success());
    let report = text(&output);
    for problem in [
        // an unknown hub
        "services[0] (service.toml): hub.name: hub `gamma` is not in the topology (hubs: alpha, beta)",
        // an unknown contract, with the closest names
        "bridges[0] (bridge.toml): routes[0].contract: unknown contract `food.contracts.v1.Ordr`: did you mean food.contracts.v1.Order",
        // contracts that are not there, named with the place they were looked for
        "bridges[2] (no-contracts.toml): contracts: ",
        "missing.pb: no such descriptor set file or folder of .proto files",
        // a port clash
        "hubs.beta.port: port 5001 is already used by hubs.alpha.port",
        // a URL that is not the hub's
        "bridges[1] (good-contract.toml): target.urls[0]: `nats://127.0.0.1:5009` is not hub `beta`, which listens on port 5001",
        // a route with nothing to carry
        "bridges[1] (good-contract.toml): routes[0].types[0]: nothing publishes `order.placed` on hub `alpha`",
    ] {
        assert!(
            report.contains(problem),
            "missing `{problem}` in:\n{report}"
        );
    }
}

#[test]
fn topology_as_mermaid_shows_every_bridge_and_contract() {
    let output = fractal(&["topology", "--topology", &shipped(), "--format", "mermaid"]);
    assert!(output.status.success(), "{}", text(&output));
    let graph = text(&output);
    assert!(graph.starts_with("flowchart LR"));
    let bridges = std::fs::read_dir(root().join("subsystems/system/bridges")).unwrap();
    for file in bridges {
        let config: fractal_bridge::BridgeConfig =
            fractal::config::from_toml(&std::fs::read_to_string(file.unwrap().path()).unwrap())
                .unwrap();
        assert!(
            graph.contains(&format!("bridge {}", config.name)),
            "{}: {graph}",
            config.name
        );
        for route in &config.routes {
            assert!(
                graph.contains(&route.contract),
                "{}: {graph}",
                route.contract
            );
            for t in &route.types {
                assert!(graph.contains(t.as_str()), "{t}: {graph}");
            }
        }
    }
    let dot = text(&fractal(&[
        "topology",
        "--topology",
        &shipped(),
        "--format",
        "dot",
    ]));
    assert!(dot.starts_with("digraph \"food-delivery\""), "{dot}");
}

/// A topology with one hub, on a test server.
fn one_hub_topology(dir: &Path, server: &NatsServer) -> String {
    let path = dir.join("fractal.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"single\"\ncontracts = \"{}\"\n[hubs.alpha]\nport = {}\n",
            root().join("proto").display(),
            server.port()
        ),
    )
    .expect("the topology is written");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_comes_back_through_tail() {
    let server = NatsServer::start();
    let _hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &server);
    let state = dir.path().join("state").display().to_string();

    let mut tail = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args([
            "tail",
            "alpha",
            "--type",
            "menu.viewed",
            "--all",
            "--count",
            "1",
        ])
        .args(["--topology", &topology, "--state", &state])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let json = dir.path().join("viewed.json");
    std::fs::write(&json, r#"{"restaurantId": "r-7", "customerId": "c-7"}"#).unwrap();
    let publish = || {
        fractal(&[
            "publish",
            "alpha",
            "--type",
            "menu.viewed",
            "--json",
            json.to_str().unwrap(),
            "--contract",
            "food.contracts.v1.MenuViewed",
            "--topology",
            &topology,
            "--state",
            &state,
        ])
    };
    let output = publish();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("(key r-7)"),
        "keyed by the first id field: {}",
        text(&output)
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail did not print the event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = tail.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&output.stdout);
    assert!(line.contains("external.menu.viewed"), "{line}");
    assert!(
        line.contains("key=r-7") && line.contains("origin=alpha"),
        "{line}"
    );
    assert!(
        line.contains(r#"{"restaurantId":"r-7","customerId":"c-7"}"#),
        "{line}"
    );

    // A payload that is not the contract is refused, saying why.
    std::fs::write(&json, r#"{"restaurantId": 7}"#).unwrap();
    let output = publish();
    assert!(!output.status.success());
    assert!(
        text(&output).contains("is not a `food.contracts.v1.MenuViewed`"),
        "{}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_fault_reaches_its_consumer_once_the_cause_is_fixed() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &server);
    let state = dir.path().join("state").display().to_string();

    // The kitchen fails on every event until its cause is fixed; the ledger handles it once.
    let fixed = Arc::new(AtomicBool::new(false));
    let (kitchen_handled, ledger_handled) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let shutdown = CancellationToken::new();
    let kitchen =
        Consumer::new(&hub, "kitchen", ConsumerConfig::default()).on_any("order.placed", {
            let (fixed, handled) = (fixed.clone(), kitchen_handled.clone());
            move |_event| {
                let (fixed, handled) = (fixed.clone(), handled.clone());
                async move {
                    if !fixed.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent("the menu cache is missing"));
                    }
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        });
    let ledger = Consumer::new(&hub, "ledger", ConsumerConfig::default()).on_any("order.placed", {
        let handled = ledger_handled.clone();
        move |_event| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    tokio::spawn(kitchen.run(shutdown.clone()));
    tokio::spawn(ledger.run(shutdown.clone()));
    simulate(
        &hub,
        [NewEvent::external(
            "order.placed",
            "o-1",
            &fractal::proto::Header::default(),
        )],
    )
    .await;
    let fault = eventually(Duration::from_secs(20), "the kitchen's fault", || {
        let hub = hub.clone();
        async move { faults(&hub).await.into_iter().next() }
    })
    .await;

    let args = ["--topology", topology.as_str(), "--state", state.as_str()];
    let list = fractal(&[&["faults", "alpha", "list"][..], &args].concat());
    assert!(
        text(&list).contains(&fault.id) && text(&list).contains("kitchen"),
        "{}",
        text(&list)
    );
    let show = fractal(&[&["faults", "alpha", "show", &fault.id][..], &args].concat());
    assert!(
        text(&show).contains("the menu cache is missing"),
        "{}",
        text(&show)
    );

    fixed.store(true, Ordering::SeqCst);
    let resubmit = fractal(&[&["faults", "alpha", "resubmit", &fault.id][..], &args].concat());
    assert!(resubmit.status.success(), "{}", text(&resubmit));
    eventually(
        Duration::from_secs(20),
        "the kitchen to handle the event",
        || {
            let handled = kitchen_handled.clone();
            async move { (handled.load(Ordering::SeqCst) == 1).then_some(()) }
        },
    )
    .await;
    let again = fractal(&[&["faults", "alpha", "resubmit", &fault.id][..], &args].concat());
    assert!(
        text(&again).contains("resubmitted already"),
        "{}",
        text(&again)
    );
    fractal_testkit::wait_until_consumed(&hub, "ledger").await;
    fractal_testkit::wait_until_consumed(&hub, "kitchen").await;
    assert_eq!(kitchen_handled.load(Ordering::SeqCst), 1);
    assert_eq!(
        ledger_handled.load(Ordering::SeqCst),
        1,
        "the resubmission is for the kitchen alone"
    );
    shutdown.cancel();
}

/// An offset at which every port of the shipped topology is free, a different one for each
/// call in this process. Offsets lie between 10939 and 15444, so that every shifted port is
/// below 65536 and none is in Linux's ephemeral range (32768 to 60999), where an outgoing
/// connection could hold it; offsets 50 apart keep two systems' ports apart.
fn free_offset() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    // Every process's ports, and those of hubs of three nodes (each node 100 further on, with
    // cluster ports from 6222).
    let mut ports = vec![
        9161u16, 9162, 9163, 9171, 9172, 9181, 9182, 9183, 9191, 9201, 9202, 9203, 9204, 9205,
        9206, 50061, 50062, 50071, 50081, 50091,
    ];
    for hub in 0..4 {
        for node in 0..3 {
            ports.extend([4222, 6222, 8222].map(|p| p + hub + 100 * node));
        }
    }
    let slot = (std::process::id() % 80) as u16;
    loop {
        let i = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(i < 80, "no free port offset");
        let offset = 10_950 + ((slot + i) % 80) * 50;
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
        {
            return offset;
        }
    }
}

/// Whole systems run one at a time: each is nineteen processes, and the machine may have two
/// cores.
fn one_system_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `fractal up` on the shipped topology at a free port offset, once it is running.
fn up(args: &[&str], state: &Path) -> Running {
    up_to(args, state, Stdio::null())
}

/// `fractal up` as [`up`], its output going to `out`.
fn up_to(args: &[&str], state: &Path, out: impl Into<Stdio>) -> Running {
    up_on(&shipped(), args, state, out)
}

/// `fractal up` on `topology` at a free port offset, once it is running.
fn up_on(topology: &str, args: &[&str], state: &Path, out: impl Into<Stdio>) -> Running {
    let offset = free_offset().to_string();
    let up = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .arg("up")
        .args(args)
        .args(["--topology", topology, "--port-offset", &offset, "--state"])
        .arg(state)
        .env("NATS_SERVER_BIN", fractal_testkit::nats_server_binary())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("fractal up starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut up = Running(up);
    while !state.join("running.json").is_file() {
        assert!(
            up.try_wait().expect("a status").is_none(),
            "fractal up exited"
        );
        assert!(Instant::now() < deadline, "the system did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    up
}

/// A running `fractal up`, stopped as Ctrl-C would stop it if a test ends without [`stop`]
/// (a failed assertion), so that no system outlives its test.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
}

/// Stops `fractal up` as Ctrl-C would, and checks it stopped cleanly.
fn stop(mut up: Running) {
    Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(up.wait().expect("an exit status").success());
}

fn pids(state: &Path) -> Vec<u32> {
    std::fs::read_to_string(state.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn up_runs_the_demo_and_a_killed_up_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _turn = one_system_at_a_time();
    let mut up = up(&[], &state);
    let started = pids(&state);
    assert_eq!(started.len(), 4 + 9 + 6, "hubs, services and bridges");

    let demo = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args(["demo", "--topology", &shipped(), "--state"])
        .arg(&state)
        .args(["--", "--orders", "10"])
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", text(&demo));
    assert!(
        text(&demo).contains("10/10 orders delivered"),
        "{}",
        text(&demo)
    );
    // A view rebuilt from the lake while the system runs holds what it held, and the
    // service serves it on.
    let topology = shipped();
    let views = |args: &[&str]| {
        let mut all = vec!["views", "rebuild"];
        all.extend(args);
        all.extend(["--topology", &topology, "--state", state.to_str().unwrap()]);
        fractal(&all)
    };
    let rebuilt = views(&["ordering/checkout", "orders"]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    assert!(
        text(&rebuilt).contains("now in bucket `view_orders__b` (was `view_orders`")
            && text(&rebuilt).contains("10 entries alike, 0 differ, 0 only before, 0 only after"),
        "{}",
        text(&rebuilt)
    );
    for (args, problem) in [
        (
            ["ordering/checkout", "nope"],
            "service `ordering/checkout` has no view `nope` in the topology (its views: catalog, orders)",
        ),
        (
            ["delivery/drivers", "deliveries"],
            "a live copy of `deliveries_by_driver` is kept in memory",
        ),
    ] {
        let refused = views(&args);
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(text(&refused).contains(problem), "{}", text(&refused));
    }
    let demo = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args(["demo", "--topology", &shipped(), "--state"])
        .arg(&state)
        .args(["--", "--orders", "3"])
        .output()
        .unwrap();
    assert!(
        text(&demo).contains("3/3 orders delivered"),
        "{}",
        text(&demo)
    );

    // Log files are plain text: no terminal colour codes.
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    for process in running.services.values().chain(running.bridges.values()) {
        let log = std::fs::read_to_string(&process.log).unwrap();
        assert!(log.contains("started"), "{}: {log}", process.log);
        assert!(!log.contains('\x1b'), "colour codes in {}", process.log);
    }

    up.kill().unwrap(); // SIGKILL: the CLI cannot clean up after itself.
    up.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while started.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            started.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_fault_resubmitted_after_its_route_is_fixed_arrives_as_the_original_event() {
    let (alpha_server, beta_server) = (NatsServer::start(), NatsServer::start());
    let (alpha, beta) = (
        alpha_server.hub("alpha").await,
        beta_server.hub("beta").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &alpha_server);
    let state = dir.path().join("state").display().to_string();
    let bridge_config = |contract: &str| {
        let path = dir.path().join("bridge.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"a-to-b\"\ncontracts = \"{}\"\nsource = {{ name = \"alpha\", urls = [\"{}\"] }}\ntarget = {{ name = \"beta\", urls = [\"{}\"] }}\nadmin = {{ listen = \"127.0.0.1:0\" }}\n[[routes]]\nname = \"menus\"\ntypes = [\"menu.changed\"]\ncontract = \"{contract}\"\n",
                root().join("proto").display(),
                alpha_server.url(),
                beta_server.url()
            ),
        )
        .unwrap();
        fractal_testkit::Process::spawn(
            "bridge",
            &fractal_testkit::workspace_binary("fractal-bridge"),
            &["--config", path.to_str().unwrap()],
            &[],
            dir.path(),
        )
    };

    // The route names the wrong contract: the menu becomes a fault on the source hub.
    let mut bridge = bridge_config("food.contracts.v1.Order");
    let menu = fractal::proto::Header {
        name: "r-1".into(),
        value: "menu".into(),
    };
    let published = simulate(&alpha, [NewEvent::external("menu.changed", "r-1", &menu)]).await;
    let fault = eventually(Duration::from_secs(20), "the bridge's fault", || {
        let alpha = alpha.clone();
        async move { faults(&alpha).await.into_iter().next() }
    })
    .await;
    assert_eq!(fault.consumer, "bridge-a-to-b-menus");

    // Fixed (the route carries what the event carries), then resubmitted.
    assert!(bridge.terminate(), "{}", bridge.log());
    let _bridge = bridge_config("fractal.platform.v1.Header");
    let args = ["--topology", topology.as_str(), "--state", state.as_str()];
    let resubmit = fractal(&[&["faults", "alpha", "resubmit", &fault.id][..], &args].concat());
    assert!(resubmit.status.success(), "{}", text(&resubmit));

    let relayed = fractal_testkit::wait_for_events(&beta, "menu.changed", 1).await;
    assert_eq!(
        relayed[0].id,
        published[0].id.to_string(),
        "the original event, under its own id"
    );
    assert_eq!(
        relayed[0].resubmitted_for, None,
        "meant for everyone on the target"
    );
    assert_eq!(relayed[0].path, ["alpha", "beta"]);
}

/// A contract nobody compiled into any program: a team's new event, its route and its
/// descriptors, all configuration.
const PARCEL_PROTO: &str = "syntax = \"proto3\";\npackage acme.parcels.v1;\n\n// A parcel on its way.\nmessage Parcel {\n  string parcel_id = 1;\n  string destination = 2;\n  uint32 weight_grams = 3;\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_new_contract_and_route_are_added_by_configuration_alone() {
    let (alpha_server, beta_server) = (NatsServer::start(), NatsServer::start());
    let (alpha, beta) = (
        alpha_server.hub("alpha").await,
        beta_server.hub("beta").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("contracts/acme/parcels/v1");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("parcel.proto"), PARCEL_PROTO).unwrap();
    let bridge = dir.path().join("bridge.toml");
    std::fs::write(
        &bridge,
        format!(
            "name = \"a-to-b\"\ncontracts = \"contracts.pb\"\nsource = {{ name = \"alpha\", urls = [\"{}\"] }}\ntarget = {{ name = \"beta\", urls = [\"{}\"] }}\nadmin = {{ listen = \"127.0.0.1:{}\" }}\n[[routes]]\nname = \"parcels\"\ntypes = [\"parcel.shipped\"]\ncontract = \"acme.parcels.v1.Parcel\"\n",
            alpha_server.url(),
            beta_server.url(),
            fractal_testkit::free_port()
        ),
    )
    .unwrap();
    let topology = dir.path().join("fractal.toml");
    std::fs::write(
        &topology,
        format!(
            "name = \"parcels\"\ncontracts = \"contracts.pb\"\n[hubs.alpha]\nport = {}\n[hubs.beta]\nport = {}\n[[services]]\nprogram = \"shipping\"\nconfig = \"dispatch.toml\"\npublishes = [\"parcel.shipped\"]\n[[bridges]]\nconfig = \"bridge.toml\"\n",
            alpha_server.port(),
            beta_server.port()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dispatch.toml"),
        format!(
            "subsystem = \"shipping\"\nservice = \"dispatch\"\nhub = {{ name = \"alpha\", urls = [\"{}\"] }}\nadmin = {{ listen = \"127.0.0.1:{}\" }}\n",
            alpha_server.url(),
            fractal_testkit::free_port()
        ),
    )
    .unwrap();
    let topology = topology.display().to_string();
    let state = dir.path().join("state").display().to_string();
    let args = ["--topology", topology.as_str(), "--state", state.as_str()];

    // The descriptor set, built from the team's .proto files.
    let out = dir.path().join("contracts.pb").display().to_string();
    let proto = dir.path().join("contracts").display().to_string();
    let build = fractal(
        &[
            &["contracts", "build", "--out", &out, "--proto", &proto][..],
            &args,
        ]
        .concat(),
    );
    assert!(build.status.success(), "{}", text(&build));
    let check = Command::new(fractal_testkit::workspace_binary("fractal-bridge"))
        .args(["--config", bridge.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));

    // The running hubs get a bridge carrying the new contract.
    let _bridge = fractal_testkit::Process::spawn(
        "bridge",
        &fractal_testkit::workspace_binary("fractal-bridge"),
        &["--config", bridge.to_str().unwrap()],
        &[],
        dir.path(),
    );
    let json = dir.path().join("parcel.json");
    std::fs::write(
        &json,
        r#"{"parcelId": "p-1", "destination": "Lisbon", "weightGrams": 1200}"#,
    )
    .unwrap();
    let json = json.display().to_string();
    let publish = fractal(
        &[
            &[
                "publish",
                "alpha",
                "--type",
                "parcel.shipped",
                "--json",
                &json,
            ][..],
            &args,
        ]
        .concat(),
    );
    assert!(publish.status.success(), "{}", text(&publish));
    assert!(text(&publish).contains("(key p-1)"), "{}", text(&publish));
    let relayed = fractal_testkit::wait_for_events(&beta, "parcel.shipped", 1).await;
    assert_eq!(relayed[0].payload_type, "acme.parcels.v1.Parcel");

    // The tools read it with the same descriptors.
    let tail = fractal(
        &[
            &[
                "tail",
                "beta",
                "--type",
                "parcel.shipped",
                "--all",
                "--count",
                "1",
            ][..],
            &args,
        ]
        .concat(),
    );
    assert!(
        text(&tail).contains(r#"{"parcelId":"p-1","destination":"Lisbon","weightGrams":1200}"#),
        "{}",
        text(&tail)
    );

    // An event of the type that is not a parcel (field 3 a string) is held as a fault.
    let not_a_parcel = fractal::proto::Fault {
        service: "heavy".into(),
        ..Default::default()
    };
    simulate(
        &alpha,
        [NewEvent::external("parcel.shipped", "p-2", &not_a_parcel)],
    )
    .await;
    let fault = eventually(Duration::from_secs(20), "the bridge's fault", || {
        let alpha = alpha.clone();
        async move { faults(&alpha).await.into_iter().next() }
    })
    .await;
    assert_eq!(fault.consumer, "bridge-a-to-b-parcels");
    assert!(
        fault.reason.contains("acme.parcels.v1.Parcel"),
        "{}",
        fault.reason
    );
}

#[test]
fn one_subsystem_runs_alone_with_its_upstream_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();
    let _turn = one_system_at_a_time();
    let mut up = up(&["--subsystem", "delivery"], &state);
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    assert_eq!(running.hubs.keys().collect::<Vec<_>>(), ["delivery"]);
    assert_eq!(running.services.len(), 3);
    assert!(running.bridges.is_empty());

    // The restaurant is not running: its `order.ready` is simulated, and the subsystem reacts.
    let json = dir.path().join("ready.json");
    std::fs::write(
        &json,
        r#"{"orderId": "o-42", "restaurantId": "r-1", "status": "ORDER_STATUS_READY"}"#,
    )
    .unwrap();
    let args = ["--topology", &shipped(), "--state", &state_arg];
    let published = fractal(
        &[
            &[
                "publish",
                "delivery",
                "--type",
                "order.ready",
                "--json",
                json.to_str().unwrap(),
            ][..],
            &args,
        ]
        .concat(),
    );
    assert!(published.status.success(), "{}", text(&published));
    // `timeout` makes a missing event a failure, not a hang.
    let tail = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_fractal"))
        .args([
            "tail",
            "delivery",
            "--type",
            "delivery.requested",
            "--all",
            "--count",
            "1",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(text(&tail).contains("key=o-42"), "{}", text(&tail));

    let started = pids(&state);
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    assert!(
        up.wait().unwrap().success(),
        "fractal up stops cleanly on SIGTERM"
    );
    assert!(
        started.iter().all(|pid| !alive(*pid)),
        "everything it started is gone"
    );
    assert!(!state.join("running.json").exists());
}

/// Supervision: a service and a bridge killed while orders flow are reported and started
/// again, and every order is still delivered, once.
#[test]
fn a_killed_service_and_bridge_are_reported_and_restarted_while_orders_flow() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out_path = dir.path().join("up.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let _turn = one_system_at_a_time();
    let up = up_to(&[], &state, out);
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    let dispatch = running.services["delivery/dispatch"].pid;
    let bridge = running.bridges["system-to-delivery"].pid;

    let demo = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args(["demo", "--topology", &shipped(), "--state"])
        .arg(&state)
        .args(["--", "--orders", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for pid in [dispatch, bridge] {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    let demo = demo.wait_with_output().unwrap();
    assert!(demo.status.success(), "{}", text(&demo));
    assert!(
        text(&demo).contains("20/20 orders delivered"),
        "{}",
        text(&demo)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = std::fs::read_to_string(&out_path).unwrap_or_default();
        let seen = [
            "delivery/dispatch exited (signal: 9",
            "delivery/dispatch restarted",
            "bridge system-to-delivery exited (signal: 9",
            "bridge system-to-delivery restarted",
        ]
        .iter()
        .all(|line| report.contains(line));
        if seen {
            break report;
        }
        assert!(Instant::now() < deadline, "not reported:\n{report}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(report.contains("Restarting in 1s."), "{report}");
    let again = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    for (old, new) in [
        (dispatch, again.services["delivery/dispatch"].pid),
        (bridge, again.bridges["system-to-delivery"].pid),
    ] {
        assert_ne!(old, new);
        assert!(alive(new), "the restarted process runs");
    }

    // Each order delivered once: one `order.delivered` per order on the ordering hub.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let delivered = runtime.block_on(async {
        let hub = fractal::Hub::connect(&again.hub_config("ordering").unwrap())
            .await
            .unwrap();
        fractal_testkit::events_of_type(&hub, "order.delivered").await
    });
    let mut orders: Vec<&str> = delivered.iter().map(|e| e.key.as_str()).collect();
    orders.sort();
    orders.dedup();
    assert_eq!((delivered.len(), orders.len()), (20, 20));

    stop(up);
}

/// `fractal status --format json` on the shipped system running from `state`: its exit code
/// and the status.
fn status(state: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    status_of(&shipped(), state, extra)
}

/// `fractal status --format json` on `topology` running from `state`.
fn status_of(topology: &str, state: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args([
            "status",
            "--format",
            "json",
            "--interval",
            "0.5",
            "--topology",
            topology,
            "--state",
        ])
        .arg(state)
        .args(extra)
        .output()
        .expect("fractal status runs");
    let json =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)));
    (output.status.code().expect("an exit code"), json)
}

fn problems(status: &serde_json::Value) -> Vec<String> {
    status["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The pid of the nats-server of `hub` that `fractal up` started from `state`.
fn hub_pid(state: &Path, hub: &str) -> u32 {
    let conf = state.join("hubs").join(format!("{hub}.conf"));
    std::fs::read_dir("/proc")
        .expect("/proc lists processes")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&*conf.to_string_lossy()))
        })
        .expect("the hub's nats-server runs")
}

#[test]
fn status_is_healthy_when_quiet_and_names_a_stopped_service_and_a_bridge_whose_target_hub_is_down()
{
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _turn = one_system_at_a_time();
    let up = up(&["--no-restart"], &state);

    let (code, quiet) = status(&state, &[]);
    assert_eq!(code, 0, "{quiet:#}");
    assert_eq!(quiet["health"], "healthy");
    assert_eq!(quiet["hubs"].as_array().unwrap().len(), 4);
    assert_eq!(quiet["services"].as_array().unwrap().len(), 9);
    assert!(
        quiet["bridges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["ready"] == true)
    );

    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    let kitchen = running.services["restaurant/kitchen"].pid;
    Command::new("kill")
        .args(["-KILL", &kitchen.to_string()])
        .status()
        .unwrap();
    let (code, stopped) = status(&state, &[]);
    assert_eq!(code, 1, "{stopped:#}");
    let found = problems(&stopped);
    assert!(
        found.iter().any(|p| p.starts_with("restaurant/kitchen: ")),
        "{found:#?}"
    );
    assert_eq!(found.len(), 1, "only the kitchen: {found:#?}");

    // The system hub down: the hub and every bridge that relays to or from it are named.
    Command::new("kill")
        .args(["-KILL", &hub_pid(&state, "system").to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let (code, down) = status(&state, &[]);
        assert_eq!(code, 1, "{down:#}");
        let found = problems(&down);
        let named = found
            .iter()
            .any(|p| p.starts_with("hub system: unreachable"))
            && found.iter().any(|p| {
                p.starts_with("bridge restaurant-to-system: not ready") && p.contains("`system`")
            });
        if named {
            break found;
        }
        assert!(Instant::now() < deadline, "{found:#?}");
    };
    assert!(
        found.iter().any(|p| p.starts_with("restaurant/kitchen: ")),
        "{found:#?}"
    );

    stop(up);
}

#[test]
fn status_of_a_system_that_does_not_answer_names_each_part_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // An admin endpoint whose /metrics is garbage, and nothing at all behind the hubs' monitors.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in garbage.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).unwrap_or(0);
            let body = if String::from_utf8_lossy(&request[..n]).contains("/metrics") {
                "<html>not metrics</html>\n"
            } else {
                "ready\n"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoints = dir.path().join("endpoints.toml");
    std::fs::write(
        &endpoints,
        format!(
            "[hubs.ordering]\nmonitors = [\"http://{closed}\"]\n\n[services]\n\"ordering/checkout\" = \"{garbage_addr}\"\n\"ordering/gateway\" = \"{closed}\"\n"
        ),
    )
    .unwrap();
    let (code, status) = status(
        dir.path(),
        &["--endpoints", &endpoints.display().to_string()],
    );
    // Nothing it could read is wrong; what it could not read is unknown: exit code 3.
    assert_eq!(code, 3, "{status:#}");
    assert_eq!(status["health"], "unknown");
    let found = problems(&status);
    let expected = [
        format!("hub ordering: unreachable: nothing answers at http://{closed}/jsz"),
        format!(
            "ordering/checkout: http://{garbage_addr}/metrics is not Prometheus text: line 1: `<html>not metrics</html>`"
        ),
        format!("ordering/gateway: nothing answers at http://{closed}/readyz"),
    ];
    for line in &expected {
        assert!(
            found.iter().any(|p| p.starts_with(line.as_str())),
            "{line}\n{found:#?}"
        );
    }
    // Parts the file does not name are unknown, not healthy.
    let system = status["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "system")
        .unwrap();
    assert_eq!(system["health"], "unknown");

    // A name the topology does not have, and a bad URL, are each reported with where they are.
    std::fs::write(
        &endpoints,
        "[hubs.nowhere]\nmonitors = [\"localhost:8222\"]\n",
    )
    .unwrap();
    let output = fractal(&[
        "status",
        "--topology",
        &shipped(),
        "--endpoints",
        &endpoints.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let said = text(&output);
    assert!(
        said.contains("hubs.nowhere.monitors[0]")
            && said.contains("is not an http:// or https:// URL"),
        "{said}"
    );
}

/// A browser driven through WebDriver (Debian's chromium and chromium-driver, which
/// `scripts/test` installs).
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: std::process::Child,
    profile: tempfile::TempDir,
}

impl Browser {
    async fn open() -> Browser {
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = fractal_testkit::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} ({e}); scripts/ensure-chromium installs it")
            });
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver answers", || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move { http.get(url).send().await.ok().map(|_| ()) }
        })
        .await;
        let profile = tempfile::tempdir().expect("a profile folder");
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let answer: serde_json::Value = http
            .post(format!("{base}/session"))
            .json(&serde_json::json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--window-size=1500,900",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }}}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        Browser {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            profile,
        }
    }

    async fn command(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/{path}", self.session))
            .json(&body)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("url", serde_json::json!({ "url": url })).await;
    }

    /// Each drawn part (`hub:system`, `service:restaurant/kitchen`, `bridge:…`) with its
    /// health and its text.
    async fn parts(&self) -> std::collections::BTreeMap<String, (String, String)> {
        let script = "return [...document.querySelectorAll('[data-part]')]\
            .map(e => [e.dataset.part, e.dataset.health, e.textContent]);";
        let value = self
            .command(
                "execute/sync",
                serde_json::json!({ "script": script, "args": [] }),
            )
            .await;
        value
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| {
                        let s = |i: usize| p[i].as_str().unwrap_or_default().to_owned();
                        (s(0), (s(1), s(2)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let answer: serde_json::Value = self
            .http
            .get(format!("{}/screenshot", self.session))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["value"].as_str().expect("a screenshot"))
            .expect("base64");
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // The browsers it started, known by their profile folder.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(self.profile.path())
            .status();
    }
}

#[test]
fn the_page_shows_every_part_and_a_service_that_goes_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _turn = one_system_at_a_time();
    let up = up(&[], &state);
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    let port = fractal_testkit::free_port();
    let mut ui = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args([
            "ui",
            "--interval",
            "0.5",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--topology", &shipped(), "--state"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let expected: Vec<String> = running
        .hubs
        .keys()
        .map(|h| format!("hub:{h}"))
        .chain(running.services.keys().map(|s| format!("service:{s}")))
        .chain(running.bridges.keys().map(|b| format!("bridge:{b}")))
        .collect();
    let kitchen = running.services["restaurant/kitchen"].pid;
    let signal = |name: &str, pid: u32| {
        Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let browser = Browser::open().await;
        let page = format!("http://127.0.0.1:{port}/");
        eventually(Duration::from_secs(20), "the page loads", || async {
            browser.goto(&page).await;
            (!browser.parts().await.is_empty()).then_some(())
        })
        .await;
        let health = |parts: &std::collections::BTreeMap<String, (String, String)>, part: &str| {
            parts.get(part).map(|(h, _)| h.clone()).unwrap_or_default()
        };
        eventually(
            Duration::from_secs(30),
            "every part drawn, healthy",
            || async {
                let parts = browser.parts().await;
                expected
                    .iter()
                    .all(|p| health(&parts, p) == "healthy")
                    .then_some(())
            },
        )
        .await;
        assert_eq!(browser.parts().await.len(), expected.len());

        // Frozen, the kitchen answers nothing: it is marked down.
        signal("STOP", kitchen);
        eventually(
            Duration::from_secs(30),
            "the kitchen marked down",
            || async {
                (health(&browser.parts().await, "service:restaurant/kitchen") == "unhealthy")
                    .then_some(())
            },
        )
        .await;
        // Killed, fractal up starts it again: it recovers, its restart counted.
        signal("KILL", kitchen);
        eventually(Duration::from_secs(30), "the kitchen recovered", || async {
            let parts = browser.parts().await;
            parts
                .get("service:restaurant/kitchen")
                .is_some_and(|(health, text)| health == "healthy" && text.contains("1 restarts"))
                .then_some(())
        })
        .await;
        let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fractal-ui.png");
        browser.screenshot(&screenshot).await;
        println!("Screenshot of the page: {}", screenshot.display());
    });

    let _ = ui.kill();
    let _ = ui.wait();
    stop(up);
}

/// The shipped topology with every hub a cluster of three nodes, written into `dir`.
fn three_node_topology(dir: &Path) -> String {
    let shipped = std::fs::read_to_string(shipped()).expect("the shipped topology");
    let root = root().canonicalize().expect("the repository");
    let mut topology = String::new();
    for line in shipped.lines() {
        let line = line.replace("config = \"", &format!("config = \"{}/", root.display()));
        topology.push_str(&line);
        topology.push('\n');
        if line.starts_with("port = ") {
            topology.push_str("nodes = 3\n");
        }
    }
    let path = dir.join("fractal.toml");
    std::fs::write(&path, topology).expect("the topology is written");
    path.display().to_string()
}

/// Hubs of three nodes: the whole system runs on them, and goes on when a node of a hub is
/// killed while orders flow.
#[test]
fn the_system_runs_on_three_node_hubs_and_outlives_a_killed_node() {
    let _turn = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let topology = three_node_topology(dir.path());
    let up = up_on(&topology, &[], &state, Stdio::null());
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    assert!(
        running.nodes.values().all(|urls| urls.len() == 3),
        "{running:?}"
    );

    let (_, status) = status_of(&topology, &state, &[]);
    for hub in status["hubs"].as_array().unwrap() {
        assert_eq!(
            (hub["nodes"].as_u64(), hub["nodes_up"].as_u64()),
            (Some(3), Some(3)),
            "{hub}"
        );
    }

    let demo = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .args(["demo", "--topology", &topology, "--state"])
        .arg(&state)
        .args(["--", "--orders", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The ordering hub's first node: the one every client lists first.
    Command::new("kill")
        .args(["-KILL", &hub_pid(&state, "ordering-0").to_string()])
        .status()
        .unwrap();
    let demo = demo.wait_with_output().unwrap();
    assert!(
        text(&demo).contains("20/20 orders delivered"),
        "{}",
        text(&demo)
    );

    stop(up);
}

/// The chaos program, short: orders flow through the system on 3-node hubs, locked down,
/// while services, bridges and hub nodes are killed at random; every order is delivered
/// exactly once, no fault is recorded, and the views checked hold what the lake says.
/// `scripts/chaos` runs the long version.
#[test]
fn chaos_short_every_order_delivered_once_while_processes_and_hub_nodes_are_killed() {
    let _turn = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let topology = three_node_topology(dir.path());
    let up = up_on(&topology, &[], &state, Stdio::null());
    let chaos = Path::new(env!("CARGO_BIN_EXE_fractal")).with_file_name("food-chaos");
    let output = Command::new(chaos)
        .arg("--system")
        .arg(state.join("running.json"))
        .args([
            "--rate",
            "8",
            "--duration-secs",
            "15",
            "--kill-every-ms",
            "2000",
        ])
        .args(["--drivers", "10", "--seed", "7"])
        .output()
        .unwrap();
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    for line in ["delivered twice 0", "differing from the lake: 0 entries"] {
        assert!(report.contains(line), "{line} in:\n{report}");
    }
    let kills = report.lines().filter(|l| l.contains("  killed ")).count();
    assert!(kills >= 5, "{kills} kills:\n{report}");
    stop(up);
}

/// A certificate authority of its own, and a client certificate it signed, in `dir`.
fn foreign_client(dir: &Path) -> fractal::hub::TlsConfig {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let authority =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA");
    let key = KeyPair::generate().expect("a key");
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("parameters")
        .signed_by(&key, &authority)
        .expect("a certificate");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("written");
        path
    };
    fractal::hub::TlsConfig {
        required: true,
        ca_file: Some(write("foreign-ca.pem", authority.pem())),
        cert_file: Some(write("foreign.pem", certificate.pem())),
        key_file: Some(write("foreign-key.pem", key.serialize_pem())),
    }
}

/// `fractal up --tls`: every hub requires mutual TLS with certificates of the run's own
/// authority; the system works end to end, and a client without one of its certificates is
/// refused.
#[test]
fn with_tls_the_system_runs_and_a_client_of_another_authority_is_refused() {
    let _turn = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = up(&["--tls"], &state);
    let demo = fractal(&[
        "demo",
        "--topology",
        &shipped(),
        "--state",
        &state.display().to_string(),
        "--",
        "--orders",
        "5",
    ]);
    assert!(
        text(&demo).contains("5/5 orders delivered"),
        "{}",
        text(&demo)
    );
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json")).unwrap();
    let operator = running.hub_config("ordering").unwrap();
    assert!(
        operator.urls.iter().all(|u| u.starts_with("tls://")),
        "{operator:?}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = operator.clone();
        config.connect_timeout_secs = 2;
        fractal::Hub::connect(&config)
            .await
            .expect("the run's own certificate is accepted");

        config.tls = Some(foreign_client(dir.path()));
        assert!(
            fractal::Hub::connect(&config).await.is_err(),
            "a certificate of another authority is refused"
        );
        let own_ca = operator.tls.clone().unwrap().ca_file;
        config.tls = Some(fractal::hub::TlsConfig {
            required: true,
            ca_file: own_ca,
            cert_file: None,
            key_file: None,
        });
        assert!(
            fractal::Hub::connect(&config).await.is_err(),
            "a client without a certificate is refused"
        );
        config.tls = None;
        config.urls = config
            .urls
            .iter()
            .map(|u| u.replace("tls://", "nats://"))
            .collect();
        assert!(
            fractal::Hub::connect(&config).await.is_err(),
            "a client without TLS is refused"
        );
    });

    stop(up);
}

#[test]
fn hub_config_prints_each_node_of_a_cluster_for_review() {
    let dir = tempfile::tempdir().unwrap();
    let topology = three_node_topology(dir.path());
    let output = fractal(&["hub", "config", "ordering", "--topology", &topology]);
    assert!(output.status.success(), "{}", text(&output));
    let config = text(&output);
    for line in [
        "server_name: ordering-0",
        "server_name: ordering-1",
        "server_name: ordering-2",
        "listen: 127.0.0.1:4424",
        "nats://127.0.0.1:6224",
        "nats://127.0.0.1:6424",
        "authorization {",
        "# service ordering/checkout",
        "nkey: U",
        "\"$JS.API.CONSUMER.MSG.NEXT.EVENTS.checkout\"",
    ] {
        assert!(config.contains(line), "{line} in\n{config}");
    }
    let open = fractal(&[
        "hub",
        "config",
        "ordering",
        "--no-auth",
        "--topology",
        &topology,
    ]);
    assert!(!text(&open).contains("authorization"), "{}", text(&open));
    let unknown = fractal(&["hub", "config", "nowhere", "--topology", &topology]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("hub `nowhere` is not in the topology"),
        "{}",
        text(&unknown)
    );
}

/// How client `id` of a run reaches `hub`: its own seed and inbox, as `fractal up` hands them.
fn as_client(state: &Path, hub: &str, id: &str) -> fractal::HubConfig {
    let running = fractal_cli::running::RunningSystem::load(&state.join("running.json"))
        .expect("the run's description");
    let mut config = running.hub_config(hub).expect("the hub runs");
    config.auth = fractal::hub::AuthConfig::Nkey {
        seed: None,
        seed_file: Some(state.join("credentials").join(format!("{id}.nk"))),
    };
    config.inbox_prefix = format!("_INBOX.{id}");
    config.connect_timeout_secs = 3;
    config.request_timeout_secs = 3;
    config
}

fn probe(scope: fractal::Scope, event_type: &str) -> NewEvent {
    NewEvent::from_parts(
        scope,
        event_type,
        "probe-1",
        "google.protobuf.Empty",
        bytes::Bytes::new(),
    )
}

#[test]
fn each_client_may_do_only_what_the_topology_grants_it() {
    use fractal::hub::{AuthConfig, HubErrorKind};
    use fractal::publish::PublishErrorKind;
    use fractal::{Hub, Publisher, Scope};

    let _turn = one_system_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let up = up(&[], &state);
    let credentials = state.join("credentials");
    for entry in std::fs::read_dir(&credentials).unwrap() {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &entry.unwrap().metadata().unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "seed files are the owner's alone");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The delivery gateway publishes what the topology lists, nothing else, and cannot
        // touch another service's durable or view, nor the streams.
        let gateway = Hub::connect(&as_client(&state, "delivery", "delivery-gateway"))
            .await
            .expect("the gateway's own credential is accepted");
        let publisher = Publisher::new(&gateway, "delivery/gateway");
        publisher
            .publish(probe(Scope::Internal, "probe.sent"))
            .await
            .expect("its subsystem's internal events");
        let refused = publisher
            .publish(probe(Scope::External, "order.placed"))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), PublishErrorKind::Forbidden, "{refused}");
        for part in [
            "events.external.order.placed",
            "nkey U",
            "delivery-gateway.nk",
        ] {
            assert!(refused.to_string().contains(part), "{part} in {refused}");
        }

        let durable = Consumer::new(&gateway, "dispatch", ConsumerConfig::default())
            .on_any("order.ready", |_| async { Ok::<_, HandlerError>(()) })
            .run(CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            durable.contains("permissions violation")
                && durable.contains("$JS.API.CONSUMER.")
                && durable.contains("EVENTS.dispatch"),
            "{durable}"
        );
        let view = fractal::view::View::<()>::open(&gateway, "deliveries")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            view.contains("permissions violation") && view.contains("opening view `deliveries`"),
            "{view}"
        );
        assert!(gateway.jetstream().delete_stream("EVENTS").await.is_err());

        // A bridge's target side publishes only its routes' external types.
        let target = Hub::connect(&as_client(
            &state,
            "delivery",
            "bridge-system-to-delivery-target",
        ))
        .await
        .unwrap();
        let relay = Publisher::new(&target, "bridge");
        for event in [
            probe(Scope::Internal, "probe.sent"),
            probe(Scope::External, "order.placed"),
        ] {
            let error = relay.publish(event).await.unwrap_err();
            assert_eq!(error.kind(), PublishErrorKind::Forbidden, "{error}");
        }

        // The operator still sees the streams; nothing was deleted.
        let operator = fractal_cli::running::RunningSystem::load(&state.join("running.json"))
            .unwrap()
            .hub_config("delivery")
            .unwrap();
        let hub = Hub::connect(&operator).await.unwrap();
        hub.jetstream().get_stream("EVENTS").await.expect("EVENTS");

        // No credential, another key, a missing or a garbled seed: each refused at once,
        // named.
        let mut config = operator.clone();
        config.auth = AuthConfig::None;
        let error = Hub::connect(&config).await.unwrap_err();
        assert_eq!(error.kind(), HubErrorKind::Credentials, "{error}");
        assert!(
            error.to_string().contains("admits only known credentials"),
            "{error}"
        );

        let stranger = nkeys::KeyPair::new_user();
        let wrong = dir.path().join("wrong.nk");
        std::fs::write(&wrong, stranger.seed().unwrap()).unwrap();
        let garbled = dir.path().join("garbled.nk");
        std::fs::write(&garbled, "SUNOTASEED").unwrap();
        for (file, says) in [
            (wrong.clone(), stranger.public_key()),
            (dir.path().join("missing.nk"), "cannot read".to_owned()),
            (garbled, "does not hold an nkey seed".to_owned()),
        ] {
            config.auth = AuthConfig::Nkey {
                seed: None,
                seed_file: Some(file),
            };
            let error = Hub::connect(&config).await.unwrap_err();
            assert_eq!(error.kind(), HubErrorKind::Credentials, "{error}");
            assert!(error.to_string().contains(&says), "{says} in {error}");
        }

        // A service given a wrong seed stops at start-up, saying why, and publishes nothing.
        let before = hub.jetstream().get_stream("EVENTS").await.unwrap();
        let program = Path::new(env!("CARGO_BIN_EXE_fractal")).with_file_name("delivery");
        let output = tokio::process::Command::new(program)
            .arg("--config")
            .arg(root().join("subsystems/delivery/config/dispatch.toml"))
            .env("DELIVERY_HUB__URLS", format!("[{:?}]", operator.urls[0]))
            .env("DELIVERY_HUB__AUTH__TYPE", "nkey")
            .env("DELIVERY_HUB__AUTH__SEED_FILE", &wrong)
            .env("DELIVERY_ADMIN__LISTEN", "127.0.0.1:0")
            .output()
            .await
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{said}");
        assert!(said.contains(&stranger.public_key()), "{said}");
        let mut after = hub.jetstream().get_stream("EVENTS").await.unwrap();
        assert_eq!(
            after.info().await.unwrap().state.messages,
            before.cached_info().state.messages
        );
    });
    stop(up);
}

/// A `menu.viewed` contract of restaurant `r-<n>`, encoded by hand (fields 1 and 2).
fn menu_viewed(n: usize) -> NewEvent {
    let (restaurant, customer) = (format!("r-{n}"), format!("c-{n}"));
    let mut payload = vec![0x0a, restaurant.len() as u8];
    payload.extend(restaurant.as_bytes());
    payload.extend([0x12, customer.len() as u8]);
    payload.extend(customer.as_bytes());
    NewEvent::from_parts(
        fractal::Scope::External,
        "menu.viewed",
        restaurant,
        "food.contracts.v1.MenuViewed",
        payload.into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_exports_as_json_lines_by_type_and_range() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &server);
    let state = dir.path().join("state").display().to_string();
    // Sequences 1–20 are menu views, 21–25 something else.
    simulate(&hub, (1..=20).map(menu_viewed)).await;
    simulate(
        &hub,
        (1..=5).map(|n| {
            NewEvent::new(
                "item.added",
                format!("i-{n}"),
                &fractal::proto::Header::default(),
            )
        }),
    )
    .await;
    let export = |args: &[&str]| {
        let mut all = vec![
            "lake",
            "export",
            "alpha",
            "--topology",
            &topology,
            "--state",
            &state,
        ];
        all.extend(args);
        fractal(&all)
    };
    let lines = |output: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };

    let all = export(&[]);
    assert!(all.status.success(), "{}", text(&all));
    assert_eq!(lines(&all).len(), 25);
    assert!(text(&all).contains("Exported 25 events"), "{}", text(&all));

    let file = dir.path().join("views.jsonl");
    let some = export(&[
        "--types",
        "menu.viewed",
        "--from",
        "11",
        "--until",
        "15",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(some.status.success(), "{}", text(&some));
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sequences: Vec<u64> = exported
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [11, 12, 13, 14, 15]);
    let first = &exported[0];
    assert_eq!(first["type"], "menu.viewed");
    assert_eq!(first["scope"], "external");
    assert_eq!(first["key"], "r-11");
    assert_eq!(first["origin"], "alpha");
    assert_eq!(
        first["payload"],
        serde_json::json!({"restaurantId": "r-11", "customerId": "c-11"})
    );

    let others = export(&["--types", "item.added"]);
    assert_eq!(lines(&others).len(), 5);

    // Bad ranges: named, non-zero, nothing written.
    for (args, says) in [
        (
            vec!["--from", "10", "--until", "9"],
            "--until is before --from",
        ),
        (
            vec!["--from", "99"],
            "nothing in that range: --from 99 is past the last event",
        ),
        (
            vec!["--types", "order.placed"],
            "no event in that range matches",
        ),
        (vec!["--from", "last week"], "is neither a stream sequence"),
    ] {
        let output = export(&args);
        assert!(!output.status.success(), "{args:?}");
        assert!(text(&output).contains(says), "{says} in {}", text(&output));
        assert!(lines(&output).is_empty(), "{args:?}");
    }
}

/// What a test consumer handled: each event's key, number and whether it was a replay.
type Handled = Arc<std::sync::Mutex<Vec<(String, usize, bool)>>>;

/// Starts consumer `name` on `hub` for `item.added`, recording what it handles in `handled`;
/// while `buggy` is set, every event fails for good (becomes a fault).
fn recording(
    hub: &fractal::Hub,
    name: &str,
    config: ConsumerConfig,
    buggy: Arc<AtomicBool>,
) -> (Handled, CancellationToken) {
    let handled: Handled = Arc::default();
    let consumer = Consumer::new(hub, name, config).on_any("item.added", {
        let handled = handled.clone();
        move |event| {
            let (handled, buggy) = (handled.clone(), buggy.clone());
            async move {
                if buggy.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent("a bug"));
                }
                let n: usize = event
                    .payload::<fractal::proto::Header>()?
                    .value
                    .parse()
                    .map_err(HandlerError::permanent)?;
                handled.lock().expect("not poisoned").push((
                    event.key.clone(),
                    n,
                    event.replay.is_some(),
                ));
                Ok(())
            }
        }
    });
    let token = CancellationToken::new();
    tokio::spawn(consumer.run(token.clone()));
    (handled, token)
}

fn numbered(n: usize, key: usize) -> NewEvent {
    let header = fractal::proto::Header {
        name: String::new(),
        value: n.to_string(),
    };
    NewEvent::new("item.added", format!("k-{key}"), &header)
}

/// Whether each key's numbers in `handled` (replays only if `replays`) are `numbers`.
fn in_order(handled: &Handled, replays: bool, numbers: std::ops::Range<usize>) -> bool {
    let handled = handled.lock().expect("not poisoned");
    (0..3).all(|k| {
        let key = format!("k-{k}");
        let seen: Vec<usize> = handled
            .iter()
            .filter(|(hk, _, replay)| *hk == key && *replay == replays)
            .map(|(_, n, _)| *n)
            .filter(|n| numbers.contains(n))
            .collect();
        seen == numbers.clone().collect::<Vec<_>>()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaches_its_consumer_alone_in_key_order_and_resumes_where_it_stopped() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &server);
    let state = dir.path().join("state").display().to_string();
    let replay = |args: &[&str]| {
        let mut all = vec!["replay"];
        all.extend(args);
        all.extend(["--topology", &topology, "--state", &state]);
        fractal(&all)
    };

    // A ledger with a bug faults every event; an audit and a gateway handle them all.
    let buggy = Arc::new(AtomicBool::new(true));
    let fixed = Arc::new(AtomicBool::new(false));
    let (ledger, _l) = recording(&hub, "ledger", ConsumerConfig::default(), buggy.clone());
    let (audit, audit_token) = recording(&hub, "audit", ConsumerConfig::default(), fixed.clone());
    let skip = ConsumerConfig {
        replays: fractal::consume::Replays::Skip,
        ..Default::default()
    };
    let (gateway, _g) = recording(&hub, "gateway", skip, fixed.clone());
    simulate(
        &hub,
        (0..10).flat_map(|n| (0..3).map(move |k| numbered(n, k))),
    )
    .await;
    eventually(Duration::from_secs(20), "30 faults", || async {
        (faults(&hub).await.len() == 30 && audit.lock().unwrap().len() == 30).then_some(())
    })
    .await;

    // The bug fixed, the range it mishandled goes to the ledger again, and to it alone.
    buggy.store(false, Ordering::SeqCst);
    let dry = replay(&[
        "alpha",
        "--to",
        "ledger",
        "--from",
        "1",
        "--until",
        "30",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    for part in ["Would replay 30 events", "item.added", "3 keys"] {
        assert!(text(&dry).contains(part), "{part} in {}", text(&dry));
    }
    let first = replay(&["alpha", "--to", "ledger", "--from", "1", "--until", "30"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("30 events replayed"),
        "{}",
        text(&first)
    );
    eventually(Duration::from_secs(20), "the ledger right", || async {
        in_order(&ledger, true, 0..10).then_some(())
    })
    .await;

    // Later events flow as usual; a rate-limited replay of them is killed midway, then the
    // same command takes it up again: each copy arrives once, in order per key.
    simulate(
        &hub,
        (10..110).flat_map(|n| (0..3).map(move |k| numbered(n, k))),
    )
    .await;
    eventually(Duration::from_secs(30), "the new events", || async {
        in_order(&ledger, false, 10..110).then_some(())
    })
    .await;
    // Sequences 31–60 are the first replay's copies; the new events are 61–360.
    let args = [
        "alpha", "--to", "ledger", "--from", "61", "--until", "360", "--rate", "100",
    ];
    let mut killed = Command::new(env!("CARGO_BIN_EXE_fractal"))
        .arg("replay")
        .args(args)
        .args(["--topology", &topology, "--state", &state])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has recorded its start and replayed some.
    eventually(Duration::from_secs(30), "the replay under way", || async {
        let list = replay(&["list", "alpha"]);
        let copies = ledger
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.2 && h.1 >= 10)
            .count();
        (text(&list).contains("running") && copies > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    killed.kill().unwrap();
    killed.wait().unwrap();
    let before = ledger
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.2 && h.1 >= 10)
        .count();
    assert!(before < 300, "the rate held it back: {before} copies");
    let again = replay(&args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("Taking up replay"),
        "{}",
        text(&again)
    );
    eventually(
        Duration::from_secs(30),
        "the rest of the replay",
        || async { in_order(&ledger, true, 10..110).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copies = ledger.lock().unwrap().iter().filter(|h| h.2).count();
    assert_eq!(copies, 330, "every copy once");
    // Nobody else saw anything twice; the gateway skipped every replay.
    assert_eq!(audit.lock().unwrap().len(), 330);
    assert_eq!(gateway.lock().unwrap().len(), 330);
    assert!(gateway.lock().unwrap().iter().all(|h| !h.2));
    let list = replay(&["list", "alpha"]);
    assert_eq!(text(&list).matches("done").count(), 2, "{}", text(&list));

    // Bad input: each named, nothing replayed.
    audit_token.cancel();
    for (args, says) in [
        (vec!["alpha", "--to", "nobody"], "has no consumer `nobody`"),
        (
            vec!["alpha", "--to", "ledger", "--types", "other.thing"],
            "does not handle `other.thing`",
        ),
        (
            vec!["alpha", "--to", "ledger", "--from", "10", "--until", "5"],
            "--until is before --from",
        ),
        (vec!["alpha", "--to", "audit"], "is not running"),
    ] {
        let output = replay(&args);
        assert!(!output.status.success(), "{args:?}");
        assert!(text(&output).contains(says), "{says} in {}", text(&output));
    }
    let copies = ledger.lock().unwrap().iter().filter(|h| h.2).count();
    assert_eq!(copies, 330);
}

/// What a deployment's provisioning Job runs: streams and view buckets on a hub that runs
/// elsewhere, and the authorization block its charts take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_running_elsewhere_is_provisioned_and_its_authorization_printed() {
    let server = NatsServer::start();
    let provisioned = fractal(&[
        "hub",
        "provision",
        "alpha",
        "--url",
        &server.url(),
        "--view",
        "orders",
        "--view",
        "catalog",
    ]);
    assert!(provisioned.status.success(), "{}", text(&provisioned));
    assert!(
        text(&provisioned).contains("Hub `alpha`: streams and 2 view buckets provisioned."),
        "{}",
        text(&provisioned)
    );
    let hub = fractal::Hub::connect(&server.hub_config("alpha"))
        .await
        .unwrap();
    hub.jetstream().get_stream("EVENTS").await.unwrap();
    for bucket in ["view_orders", "view_catalog", "views"] {
        hub.jetstream().get_key_value(bucket).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let authorization = fractal(&[
        "hub",
        "authorization",
        "ordering",
        "--topology",
        &shipped(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(authorization.status.success(), "{}", text(&authorization));
    let block = String::from_utf8_lossy(&authorization.stdout).into_owned();
    assert!(block.contains("authorization {"), "{block}");
    assert!(block.contains("# service ordering/checkout"), "{block}");
    let seed = std::fs::read_to_string(state.join("credentials/ordering-checkout.nk")).unwrap();
    assert!(!block.contains(seed.trim()), "a seed in {block}");
    let unknown = fractal(&["hub", "authorization", "nowhere", "--topology", &shipped()]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("hub `nowhere` is not in the topology"),
        "{}",
        text(&unknown)
    );
}

/// `fractal contracts check` against a descriptor set: the same contracts pass; a version in
/// which a carried field has another type and another was dropped is reported as breaking,
/// with file, message and field, as text and as JSON; a file that is not a descriptor set is
/// named in the error.
#[test]
fn contracts_check_reports_breaking_changes_against_a_descriptor_set() {
    let dir = tempfile::tempdir().unwrap();
    // `contracts build` writes the descriptors of a `.proto` folder as a file the check takes.
    let build = |proto: &Path, out: &str| {
        let (proto, out) = (proto.display().to_string(), dir.path().join(out));
        let build = fractal(&[
            "contracts",
            "build",
            "--topology",
            &shipped(),
            "--proto",
            &proto,
            "--out",
            &out.display().to_string(),
        ]);
        assert!(build.status.success(), "{}", text(&build));
        out
    };

    let same = build(&root().join("proto"), "same.binpb")
        .display()
        .to_string();
    let output = fractal(&[
        "contracts",
        "check",
        "--topology",
        &shipped(),
        "--against",
        &same,
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("0 changes"), "{}", text(&output));

    // The baseline is an older version: `total_cents` was a string and `tip_cents` existed.
    let older = proto_with(&dir.path().join("older"), |text| {
        text.replace("int64 total_cents = 8;", "string total_cents = 8;")
            .replace(
                "  Driver driver = 18;\n",
                "  Driver driver = 18;\n  int64 tip_cents = 19;\n",
            )
    });
    let old = build(&older, "old.binpb");
    let old = old.display().to_string();
    let shipped = shipped();
    let output = fractal(&[
        "contracts",
        "check",
        "--topology",
        &shipped,
        "--against",
        &old,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = text(&output);
    assert!(
        report.contains("breaking: food/contracts/v1/order.proto: food.contracts.v1.Order `total_cents`: field 8 changed type from string to int64"),
        "{report}"
    );
    assert!(
        report.contains("food.contracts.v1.Order `tip_cents`: field 19 removed without reserving its number and name"),
        "{report}"
    );
    let output = fractal(&[
        "contracts",
        "check",
        "--topology",
        &shipped,
        "--against",
        &old,
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["breaking"], 2, "{json}");
    assert_eq!(json["changes"][0]["field"], "total_cents", "{json}");

    let garbage = dir.path().join("garbage.binpb");
    std::fs::write(&garbage, b"not a descriptor set").unwrap();
    let garbage = garbage.display().to_string();
    let output = fractal(&[
        "contracts",
        "check",
        "--topology",
        &shipped,
        "--against",
        &garbage,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("{garbage}: not a descriptor set")),
        "{}",
        text(&output)
    );
}

/// An `order.placed` event whose payload is a `food.contracts.v1.Order` (built from the
/// repository's `.proto`, which the CLI's tests do not link), with `order_id`, a total and a
/// currency.
fn order_placed(order_id: &str) -> NewEvent {
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};

    let proto = root().join("proto");
    let files = [proto.join("food/contracts/v1/order.proto")];
    let compiled = protox::compile(&files, [&proto]).expect("the order contract compiles");
    let pool = DescriptorPool::from_file_descriptor_set(compiled).expect("consistent");
    let order = pool
        .get_message_by_name("food.contracts.v1.Order")
        .expect("the order contract");
    let mut message = DynamicMessage::new(order);
    message.set_field_by_name("order_id", Value::String(order_id.into()));
    message.set_field_by_name("total_cents", Value::I64(1234));
    message.set_field_by_name("currency", Value::String("EUR".into()));
    NewEvent::from_parts(
        fractal::Scope::External,
        "order.placed",
        order_id,
        "food.contracts.v1.Order",
        message.encode_to_vec().into(),
    )
}

/// Copies `proto/` into `dir`, with `edit` applied to the order contract.
fn proto_with(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let copy = dir.join("proto");
    let mut folders = vec![PathBuf::new()];
    while let Some(folder) = folders.pop() {
        std::fs::create_dir_all(copy.join(&folder)).expect("a folder");
        for entry in std::fs::read_dir(root().join("proto").join(&folder)).expect("proto/ reads") {
            let entry = entry.expect("an entry");
            let relative = folder.join(entry.file_name());
            if entry.path().is_dir() {
                folders.push(relative);
            } else {
                let text = std::fs::read_to_string(entry.path()).expect("a .proto file");
                let text = if relative.ends_with("contracts/v1/order.proto") {
                    edit(text)
                } else {
                    text
                };
                std::fs::write(copy.join(&relative), text).expect("the copy is written");
            }
        }
    }
    copy
}

/// `fractal contracts check --hub`: the stored events of each external type decode with the
/// contracts as they are; with a field dropped they lose it, with a field's type changed they
/// no longer decode, each reported per type and payload version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contracts_check_decodes_the_lake_with_the_candidate_contracts() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = one_hub_topology(dir.path(), &server);
    let state = dir.path().join("state").display().to_string();

    let orders: Vec<NewEvent> = (0..3).map(|i| order_placed(&format!("o-{i}"))).collect();
    let publisher = fractal::Publisher::new(&hub, "test/ordering");
    for event in orders {
        publisher.publish(event).await.unwrap();
    }

    let check = |proto: &Path| {
        let proto = proto.display().to_string();
        fractal(&[
            "contracts",
            "check",
            "--hub",
            "alpha",
            "--proto",
            &proto,
            "--topology",
            &topology,
            "--state",
            &state,
        ])
    };
    // Each candidate: its edit of the order contract, whether the stored events still read,
    // and what the report says of them.
    type Edit = fn(String) -> String;
    let candidates: [(&str, Edit, bool, &str); 4] = [
        (
            "current",
            |text| text,
            true,
            "reads: order.placed (food.contracts.v1.Order): 3 events read, 3 decode",
        ),
        (
            "dropped",
            |text| text.replace("  string currency = 9;\n", ""),
            false,
            "breaking: order.placed (food.contracts.v1.Order): 3 events read, 0 decode, 3 lose fields 9",
        ),
        // Removed the right way, number and name reserved: old events still read as intended.
        (
            "reserved",
            |text| {
                text.replace(
                    "  string currency = 9;\n",
                    "  reserved 9;\n  reserved \"currency\";\n",
                )
            },
            true,
            "3 events read, 3 decode (fields 9 removed and reserved)",
        ),
        (
            "retyped",
            |text| text.replace("int64 total_cents = 8;", "string total_cents = 8;"),
            false,
            "3 no longer decode",
        ),
    ];
    for (name, edit, reads, expected) in candidates {
        let proto = proto_with(&dir.path().join(name), edit);
        let output = tokio::task::block_in_place(|| check(&proto));
        let expected_code = if reads { 0 } else { 1 };
        assert_eq!(
            output.status.code(),
            Some(expected_code),
            "{name}: {}",
            text(&output)
        );
        assert!(
            text(&output).contains(expected),
            "{name}: {}",
            text(&output)
        );
    }
}

/// The catalogue: `fractal contracts list` shows each external type of the shipped system with
/// its message, producers and consumers; `show` adds the message's fields and comments, the
/// routes and versions and, with `--hub`, the latest such event stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_lists_and_shows_each_external_type() {
    let shipped = shipped();
    let list = fractal(&["contracts", "list", "--topology", &shipped]);
    assert!(list.status.success(), "{}", text(&list));
    let line = text(&list)
        .lines()
        .find(|l| l.trim_start().starts_with("order.placed "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    assert_eq!(
        line,
        "order.placed food.contracts.v1.Order ordering/gateway restaurant/gateway, system/insights 2",
        "{}",
        text(&list)
    );
    let show = fractal(&["contracts", "show", "menu.viewed", "--topology", &shipped]);
    let shown = text(&show);
    assert!(show.status.success(), "{shown}");
    for expected in [
        "produced by ordering/gateway",
        "consumed by system/insights",
        "carried by  ordering-to-system/menu-views",
        "versions    food.contracts.v1.MenuViewed",
        "// A customer looked at a restaurant's menu.",
        "string restaurant_id = 1;",
        "google.protobuf.Timestamp viewed_at = 3;",
    ] {
        assert!(shown.contains(expected), "`{expected}` not in:\n{shown}");
    }
    let unknown = fractal(&["contracts", "show", "order.eaten", "--topology", &shipped]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no route carries `order.eaten`"),
        "{}",
        text(&unknown)
    );

    // A one-hub system with a route for `order.placed`, and one order stored.
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("fractal.toml");
    let (beta, admin) = (fractal_testkit::free_port(), fractal_testkit::free_port());
    std::fs::write(
        &topology,
        format!(
            "name = \"single\"\n[hubs.alpha]\nport = {}\n[hubs.beta]\nport = {beta}\n[[services]]\nprogram = \"ordering\"\nconfig = \"service.toml\"\npublishes = [\"order.placed\"]\n[[bridges]]\nconfig = \"bridge.toml\"\n",
            server.port(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("service.toml"),
        format!(
            "subsystem = \"ordering\"\nservice = \"gateway\"\n[hub]\nname = \"alpha\"\nurls = [\"{}\"]\n",
            server.url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bridge.toml"),
        format!(
            "name = \"a-to-b\"\ncontracts = \"{}\"\nsource = {{ name = \"alpha\", urls = [\"{}\"] }}\ntarget = {{ name = \"beta\", urls = [\"nats://127.0.0.1:{beta}\"] }}\n[[routes]]\nname = \"orders\"\ntypes = [\"order.placed\"]\ncontract = \"food.contracts.v1.Order\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            root().join("proto").display(),
            server.url()
        ),
    )
    .unwrap();
    let proto = root().join("proto");
    let event = order_placed("o-7");
    simulate(&hub, [event]).await;
    let (topology, proto) = (topology.display().to_string(), proto.display().to_string());
    let state = dir.path().join("state").display().to_string();
    let show = tokio::task::block_in_place(|| {
        fractal(&[
            "contracts",
            "show",
            "order.placed",
            "--hub",
            "alpha",
            "--proto",
            &proto,
            "--topology",
            &topology,
            "--state",
            &state,
        ])
    });
    let shown = text(&show);
    assert!(show.status.success(), "{shown}");
    assert!(shown.contains("carried by  a-to-b/orders"), "{shown}");
    assert!(shown.contains("latest on `alpha`:"), "{shown}");
    assert!(shown.contains("\"orderId\":\"o-7\""), "{shown}");
}

/// The AsyncAPI 3.0.0 JSON Schema, from the `@asyncapi/specs` package (6.11.1, Apache-2.0,
/// `schemas/3.0.0-without-$id.json`).
const ASYNCAPI_SCHEMA: &str = include_str!("asyncapi-3.0.0.json");

#[test]
fn the_asyncapi_document_of_the_system_is_valid_asyncapi_3() {
    let output = fractal(&[
        "contracts",
        "list",
        "--format",
        "asyncapi",
        "--topology",
        &shipped(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let schema: serde_json::Value = serde_json::from_str(ASYNCAPI_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the AsyncAPI schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // Each hub a server, each external type on a hub a channel with its subject and message.
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["servers"].as_object().unwrap().len(), 4);
    let placed = &document["channels"]["ordering.order.placed"];
    assert_eq!(placed["address"], "events.external.order.placed");
    assert_eq!(
        placed["messages"]["food.contracts.v1.Order"]["$ref"],
        "#/components/messages/food.contracts.v1.Order"
    );
    // Who publishes it there, and the route that reads it; the route's write on the system hub.
    let operations = document["operations"].as_object().unwrap();
    for (id, action) in [
        ("ordering_gateway.publishes.ordering.order.placed", "send"),
        (
            "bridge_ordering-to-system_orders.consumes.ordering.order.placed",
            "receive",
        ),
        (
            "bridge_ordering-to-system_orders.publishes.system.order.placed",
            "send",
        ),
        (
            "restaurant_gateway.consumes.restaurant.order.placed",
            "receive",
        ),
    ] {
        assert_eq!(
            operations[id]["action"],
            action,
            "{id} in {:?}",
            operations.keys()
        );
    }
    // The payload is the message's JSON mapping.
    let order = &document["components"]["schemas"]["food.contracts.v1.Order"];
    assert_eq!(order["properties"]["orderId"]["type"], "string");
    assert_eq!(order["properties"]["placedAt"]["format"], "date-time");
    assert_eq!(
        order["properties"]["lines"]["items"]["$ref"],
        "#/components/schemas/food.contracts.v1.OrderLine"
    );
    assert!(
        order["properties"]["status"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"ORDER_STATUS_DELIVERED".into())
    );
}

fn group() -> String {
    root()
        .join("subsystems/group/fractal.toml")
        .display()
        .to_string()
}

#[test]
fn a_system_includes_whole_systems_as_subsystems_named_by_their_path() {
    let output = fractal(&["check", "--topology", &group()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output)
            .contains("system `food-group` with 9 hubs, 19 services and 14 bridges is valid"),
        "{}",
        text(&output)
    );
    let tree = fractal(&["topology", "--topology", &group()]);
    let tree = text(&tree);
    for expected in [
        "  group (port 4300)\n    group/revenue [group]\n",
        "  system north:\n    north.delivery (port 5225)\n",
        "      north.ordering/checkout [ordering]\n",
        "    south.system (port 6222)\n",
        "  north-to-group: north.system -> group\n",
        "  north-ordering-to-system: north.ordering -> north.system\n",
    ] {
        assert!(tree.contains(expected), "`{expected}` not in:\n{tree}");
    }
    let mermaid = text(&fractal(&[
        "topology",
        "--format",
        "mermaid",
        "--topology",
        &group(),
    ]));
    assert!(
        mermaid.contains("  subgraph system_north [system north]\n    subgraph hub_north_delivery [hub north.delivery]"),
        "{mermaid}"
    );
    let dot = text(&fractal(&[
        "topology",
        "--format",
        "dot",
        "--topology",
        &group(),
    ]));
    assert!(dot.contains("subgraph cluster_system_south {"), "{dot}");
}

#[test]
fn include_errors_name_their_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| std::fs::write(dir.path().join(name), content).unwrap();
    let city = root().join("fractal.toml").display().to_string();
    write(
        "group.toml",
        &format!(
            "name = \"group\"\n[hubs.group]\nport = 4300\n[[systems]]\nname = \"north\"\ntopology = \"{city}\"\n[[systems]]\nname = \"north\"\ntopology = \"{city}\"\n"
        ),
    );
    let topology = dir.path().join("group.toml").display().to_string();
    let output = fractal(&["check", "--topology", &topology]);
    assert!(!output.status.success());
    // The same path twice.
    assert!(
        text(&output).contains("systems[1].name: system `north` is included twice"),
        "{}",
        text(&output)
    );
    write(
        "group.toml",
        &format!(
            "name = \"group\"\n[hubs.group]\nport = 4300\n[[systems]]\nname = \"north\"\ntopology = \"{city}\"\n[[systems]]\nname = \"lost\"\ntopology = \"nowhere.toml\"\n[[systems]]\nname = \"loop\"\ntopology = \"a.toml\"\n[[bridges]]\nconfig = \"up.toml\"\n"
        ),
    );
    write(
        "a.toml",
        "name = \"a\"\n[hubs.a]\nport = 4400\n[[systems]]\nname = \"b\"\ntopology = \"b.toml\"\n",
    );
    write(
        "b.toml",
        "name = \"b\"\n[hubs.b]\nport = 4500\n[[systems]]\nname = \"a\"\ntopology = \"a.toml\"\n",
    );
    write(
        "up.toml",
        "name = \"up\"\nsource = { name = \"north.nothing\", urls = [\"nats://127.0.0.1:5222\"] }\ntarget = { name = \"group\", urls = [\"nats://127.0.0.1:4300\"] }\nadmin = { listen = \"127.0.0.1:9499\" }\n[[routes]]\nname = \"orders\"\ntypes = [\"order.placed\"]\ncontract = \"fractal.platform.v1.Header\"\n",
    );
    let output = fractal(&["check", "--topology", &topology]);
    assert!(!output.status.success());
    let report = text(&output);
    for problem in [
        // a file that is not there
        "systems[1] (lost: nowhere.toml): cannot read `",
        // a cycle, through the files that make it
        "systems[2] (loop: a.toml): systems[0] (loop.b: b.toml): systems[0].topology: includes itself: ",
        // a hub outside the tree
        "bridges[0] (up.toml): source.name: hub `north.nothing` is not in the topology",
    ] {
        assert!(
            report.contains(problem),
            "missing `{problem}` in:\n{report}"
        );
    }
}
