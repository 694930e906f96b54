//! The charts, checked offline as a cluster would take them: lint, schemas, Kubernetes'
//! own validation, restricted pod security, configuration checksums, hub configurations that
//! `nats-server` accepts, and program configurations each program accepts.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use fractal_charts::{
    CONTRACTS_MOUNT, Value, chart, find, helm, id, mount_contracts, pod_spec, program, render,
    root, runs, tool,
};

/// Every chart with each of its `ci/*-values.yaml` (and with its defaults alone).
fn cases() -> Vec<(&'static str, Option<PathBuf>)> {
    let mut cases = Vec::new();
    for name in ["fractal-subsystem", "food-delivery"] {
        cases.push((name, None));
        let mut files: Vec<PathBuf> = std::fs::read_dir(chart(name).join("ci"))
            .expect("the chart has ci values")
            .map(|e| e.expect("readable").path())
            .collect();
        files.sort();
        cases.extend(files.into_iter().map(|f| (name, Some(f))));
    }
    cases
}

fn rendered(name: &str, values: &Option<PathBuf>) -> (String, Vec<Value>) {
    let files: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
    render(name, "fractal", &files, &[])
        .unwrap_or_else(|e| panic!("{name} with {values:?} does not render: {e}"))
}

fn all_rendered() -> Vec<(String, String, Vec<Value>)> {
    cases()
        .into_iter()
        .map(|(name, values)| {
            let (text, documents) = rendered(name, &values);
            let case = format!(
                "{name}{}",
                values
                    .map(|v| format!(" with {}", v.file_name().unwrap().to_string_lossy()))
                    .unwrap_or_default()
            );
            (case, text, documents)
        })
        .collect()
}

#[test]
fn every_chart_lints_strictly_with_its_defaults_and_each_ci_values_file() {
    for (name, values) in cases() {
        let chart = chart(name).display().to_string();
        let mut args = vec!["lint", "--strict", chart.as_str()];
        let file = values.as_ref().map(|v| v.display().to_string());
        if let Some(file) = &file {
            args.extend(["--values", file.as_str()]);
        }
        let output = helm(&args);
        assert!(
            output.status.success(),
            "helm lint {name} {file:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_schemas_are_as_their_generator_writes_them() {
    let output = Command::new(root().join("scripts/helm-schemas"))
        .arg("--check")
        .output()
        .expect("the generator runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Renders the reference chart with `values` (YAML) and returns helm's error.
fn refused(values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    match render("food-delivery", "fractal", &[&file], &[]) {
        Ok(_) => panic!("rendered with {values}"),
        Err(e) => e,
    }
}

#[test]
fn values_that_cannot_work_are_refused_with_their_place() {
    let cases = [
        ("colour: red", "additional properties 'colour' not allowed"),
        (
            "hubDefaults: {nodes: 2}",
            "at '/hubDefaults/nodes': value must be one of 1, 3, 5",
        ),
        (
            "hubDefaults: {nodes: 3, streamReplicas: 5}",
            "hub.streamReplicas: 5 replicas need at least as many nodes; the hub has 3",
        ),
        (
            "subsystems: {ordering: {enabled: true, bridges: [{name: b, configFile: bridges/ordering-to-system.toml, admin: {port: 9203}, replicas: 2, source: {hub: ordering}, target: {hub: system}}]}}",
            "at '/subsystems/ordering/bridges/0/replicas': value must be one of 0, 1",
        ),
        (
            "telemetry: {otlp: {endpoint: 'collector:4317'}}",
            "at '/telemetry/otlp/endpoint': 'collector:4317' does not match pattern",
        ),
        (
            "telemetry: {otlp: {endpoint: 'http://collector:4318'}}",
            "is OTLP over HTTP (port 4318)",
        ),
        (
            "serviceDefaults: {replicas: 1, colour: red}",
            "at '/serviceDefaults': additional properties 'colour' not allowed",
        ),
        (
            "subsystems: {ordering: {enabled: true, services: [{name: checkout, program: ordering, admin: {port: 1}}]}}",
            "services[checkout]: give its program's TOML as `config`",
        ),
    ];
    for (values, problem) in cases {
        let error = refused(values);
        assert!(error.contains(problem), "{values}: {error}");
    }
}

#[test]
fn every_manifest_passes_kubernetes_validation_for_1_30_and_1_33() {
    let dir = tempfile::tempdir().unwrap();
    for (case, text, _) in all_rendered() {
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, text).unwrap();
        for version in ["1.30.0", "1.33.0"] {
            let output = Command::new(tool("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate runs");
            assert!(
                output.status.success(),
                "{case} for Kubernetes {version}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn every_pod_runs_under_restricted_security_with_requests_and_a_memory_limit() {
    let stable: BTreeSet<&str> = [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    ]
    .into();
    for (case, _, documents) in all_rendered() {
        let mut pods = 0;
        for manifest in &documents {
            if let Some(selector) = manifest["spec"]["selector"]["matchLabels"].as_object() {
                for key in selector.keys() {
                    assert!(
                        stable.contains(key.as_str()),
                        "{case} {}: selects by {key}",
                        id(manifest)
                    );
                }
            }
            let Some(spec) = pod_spec(manifest) else {
                continue;
            };
            pods += 1;
            let at = format!("{case} {}", id(manifest));
            assert_eq!(spec["automountServiceAccountToken"], false, "{at}");
            assert_eq!(spec["enableServiceLinks"], false, "{at}");
            let pod = &spec["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{at}");
            assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{at}");
            let containers = spec["containers"].as_array().expect("containers");
            let init = spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for container in containers.iter().chain(&init) {
                let at = format!("{at} container {}", container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(security["runAsNonRoot"], true, "{at}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault", "{at}");
                let resources = &container["resources"];
                for (path, value) in [
                    ("requests.cpu", &resources["requests"]["cpu"]),
                    ("requests.memory", &resources["requests"]["memory"]),
                    ("limits.memory", &resources["limits"]["memory"]),
                ] {
                    assert!(value.is_string(), "{at}: no {path}");
                }
            }
        }
        assert!(pods > 0, "{case}: no pod rendered");
    }
}

/// The checksum annotation of each Deployment and StatefulSet, by name.
fn checksums(documents: &[Value]) -> BTreeMap<String, String> {
    documents
        .iter()
        .filter(|m| m["kind"] == "Deployment" || m["kind"] == "StatefulSet")
        .map(|m| {
            let sum = m["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no config checksum", id(m)))
                .to_owned();
            (id(m), sum)
        })
        .collect()
}

#[test]
fn editing_one_services_config_changes_only_its_own_checksum() {
    let before = checksums(&rendered("food-delivery", &None).1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    let checkout = std::fs::read_to_string(root().join("subsystems/ordering/config/checkout.toml"))
        .unwrap()
        .replace("127.0.0.1:50071", "127.0.0.1:50072");
    let values = serde_json::json!({
        "subsystems": {"ordering": {"enabled": true, "services": [
            {"name": "checkout", "program": "ordering", "config": checkout,
             "grpc": {"port": 50071, "service": true}, "admin": {"port": 9171}},
            {"name": "gateway", "program": "ordering", "configFile": "ordering/gateway.toml",
             "admin": {"port": 9172}}
        ]}}
    });
    std::fs::write(&file, serde_json::to_string(&values).unwrap()).unwrap();
    let after = checksums(&render("food-delivery", "fractal", &[&file], &[]).unwrap().1);
    let changed: Vec<&String> = before
        .keys()
        .filter(|name| before[*name] != after[*name])
        .collect();
    assert_eq!(changed, ["Deployment/ordering-checkout"]);
}

/// The `data` of every ConfigMap, by ConfigMap and key.
fn config_maps(documents: &[Value]) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for manifest in documents.iter().filter(|m| m["kind"] == "ConfigMap") {
        for (key, value) in manifest["data"].as_object().into_iter().flatten() {
            found.push((
                id(manifest),
                key.clone(),
                value.as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    found
}

#[test]
fn each_hub_configuration_is_one_nats_server_accepts_and_no_config_map_holds_a_secret() {
    let nats = fractal_testkit::nats_server_binary();
    let dir = tempfile::tempdir().unwrap();
    // A hub's TLS Secret, as it would be mounted: one self-signed certificate, its own CA.
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["hub-ordering".to_owned()]).unwrap();
    std::fs::write(tls.join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(tls.join("ca.crt"), certified.cert.pem()).unwrap();
    std::fs::write(tls.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
    let mut tls_checked = false;
    for (case, _, documents) in all_rendered() {
        for (map, key, value) in config_maps(&documents) {
            for secret in ["password", "token:"] {
                assert!(
                    !value.contains(secret),
                    "{case} {map} {key} holds `{secret}`"
                );
            }
            // An nkey seed: 58 base32 characters starting with `S` (a public key has 56).
            let seed = value
                .split(|c: char| !c.is_ascii_alphanumeric())
                .find(|word| word.len() == 58 && word.starts_with('S'));
            assert!(seed.is_none(), "{case} {map} {key} holds a seed");
            if key != "nats.conf" {
                continue;
            }
            let file = dir.path().join("nats.conf");
            tls_checked |= value.contains("/etc/nats/tls/");
            let mounted = value.replace("/etc/nats/tls/", &format!("{}/", tls.display()));
            std::fs::write(&file, &mounted).unwrap();
            let output = Command::new(nats)
                .arg("-t")
                .arg("-c")
                .arg(&file)
                .env("POD_NAME", "hub-0")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{case} {map}: {}{}\n{value}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    assert!(tls_checked, "no hub configuration with TLS was checked");
}

#[test]
fn every_program_accepts_its_rendered_configuration_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = format!("{}/", dir.path().display());
    for (case, _, documents) in all_rendered() {
        // A ConfigMap the chart does not render holds what `fractal contracts build` writes.
        std::fs::copy(
            chart("food-delivery").join("files/contracts.pb"),
            dir.path().join("contracts.pb"),
        )
        .unwrap();
        mount_contracts(&documents, dir.path());
        for manifest in documents.iter().filter(|m| m["kind"] == "Deployment") {
            let runs = runs(&documents, manifest);
            let file = dir.path().join(&runs.file);
            std::fs::write(&file, &runs.config).unwrap();
            // Literal values only: the downward API's fields are not configuration.
            let env: Vec<(String, String)> = runs.container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_owned(),
                        e["value"].as_str()?.replace(CONTRACTS_MOUNT, &mounted),
                    ))
                })
                .collect();
            // A variable under another prefix would be ignored, not refused: the charts'
            // prefix rule must be the programs' own.
            let prefix = match runs.program.as_str() {
                "fractal-bridge" => "BRIDGE_".to_owned(),
                other => fractal::service::env_prefix(other),
            };
            for (name, _) in &env {
                assert!(
                    name.starts_with(&prefix) || name.starts_with("OTEL_"),
                    "{case} {}: `{name}` is not under {prefix}",
                    id(manifest)
                );
            }
            let output = Command::new(program(&runs.program))
                .arg("--config")
                .arg(&file)
                .arg("--check")
                .env_clear()
                .envs(env)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{case} {}: `{} --check` refuses its config: {}",
                id(manifest),
                runs.program,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn two_renders_are_byte_identical() {
    for (name, values) in cases() {
        assert_eq!(
            rendered(name, &values).0,
            rendered(name, &values).0,
            "{name} {values:?}"
        );
    }
}

#[test]
fn the_reference_system_renders_every_hub_service_and_bridge_of_its_topology() {
    let (_, documents) = rendered("food-delivery", &None);
    for hub in ["system", "restaurant", "ordering", "delivery"] {
        find(&documents, "StatefulSet", &format!("hub-{hub}"));
        find(&documents, "Service", &format!("hub-{hub}"));
    }
    let deployments: BTreeSet<String> = documents
        .iter()
        .filter(|m| m["kind"] == "Deployment")
        .map(|m| m["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = [
        "system-insights",
        "restaurant-menus",
        "restaurant-kitchen",
        "restaurant-gateway",
        "ordering-checkout",
        "ordering-gateway",
        "delivery-drivers",
        "delivery-dispatch",
        "delivery-gateway",
        "bridge-system-to-restaurant",
        "bridge-system-to-ordering",
        "bridge-system-to-delivery",
        "bridge-restaurant-to-system",
        "bridge-ordering-to-system",
        "bridge-delivery-to-system",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(deployments, expected);
    let bridge = find(&documents, "Deployment", "bridge-ordering-to-system");
    assert_eq!(bridge["spec"]["strategy"]["type"], "Recreate");
    // One subsystem alone reaches the system hub in its namespace.
    let (_, alone) = rendered(
        "food-delivery",
        &Some(chart("food-delivery").join("ci/one-subsystem-values.yaml")),
    );
    let bridge = find(&alone, "Deployment", "bridge-ordering-to-system");
    let env = &bridge["spec"]["template"]["spec"]["containers"][0]["env"];
    let target = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "BRIDGE_TARGET__URLS")
        .unwrap();
    assert_eq!(
        target["value"],
        "[\"nats://hub-system.system.svc.cluster.local:4222\"]"
    );
    assert!(
        alone
            .iter()
            .all(|m| m["metadata"]["labels"]["fractal.dev/subsystem"] == "ordering")
    );
}

#[test]
fn the_plain_manifests_are_a_fresh_render_of_the_charts() {
    let output = Command::new(root().join("scripts/render-k8s"))
        .arg("--check")
        .output()
        .expect("the render script runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every YAML file under `k8s/` and every values file of the charts.
fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![root().join("k8s")];
    for name in ["fractal-subsystem", "food-delivery"] {
        files.push(chart(name).join("values.yaml"));
        folders.push(chart(name).join("ci"));
    }
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_yaml_file_passes_yamllint() {
    let config = "{extends: relaxed, rules: {line-length: disable}}";
    let output = Command::new(tool("yamllint"))
        .args(["--strict", "-d", config])
        .args(yaml_files())
        .output()
        .expect("yamllint runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_development_tracing_manifests_are_valid_and_restricted() {
    let folder = root().join("k8s/observability");
    for file in ["collector.yaml", "jaeger.yaml", "namespace.yaml"] {
        let path = folder.join(file);
        for version in ["1.30.0", "1.33.0"] {
            let output = Command::new(tool("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{file} for {version}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        let documents = fractal_charts::parse(&std::fs::read_to_string(&path).unwrap());
        for manifest in &documents {
            let Some(spec) = pod_spec(manifest) else {
                continue;
            };
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{file}");
            for container in spec["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{file}"
                );
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{file}"
                );
            }
        }
    }
}

#[test]
fn helm_test_drives_the_demo_through_the_deployed_services() {
    let (_, documents) = rendered("food-delivery", &None);
    let pod = find(&documents, "Pod", "food-delivery-demo");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let map = find(&documents, "ConfigMap", "food-delivery-demo");
    let system: fractal_cli::running::RunningSystem =
        serde_json::from_str(map["data"]["system.json"].as_str().unwrap())
            .expect("the demo reads its system description");
    for (service, endpoint) in [
        ("restaurant/menus", "http://restaurant-menus:50061"),
        ("restaurant/kitchen", "http://restaurant-kitchen:50062"),
        ("ordering/checkout", "http://ordering-checkout:50071"),
        ("delivery/drivers", "http://delivery-drivers:50081"),
    ] {
        assert_eq!(
            system.services[service].grpc.as_deref(),
            Some(endpoint),
            "{service}"
        );
        let deployed = find(&documents, "Service", &service.replace('/', "-"));
        assert_eq!(deployed["spec"]["ports"][0]["name"], "grpc", "{service}");
    }
    // One subsystem alone has no demo to run.
    let (_, alone) = rendered(
        "food-delivery",
        &Some(chart("food-delivery").join("ci/one-subsystem-values.yaml")),
    );
    assert!(alone.iter().all(|m| m["kind"] != "Pod"));
}

#[test]
fn network_policies_admit_only_each_hubs_clients_and_monitoring_only_when_enabled() {
    let (_, plain) = rendered("food-delivery", &None);
    for kind in ["NetworkPolicy", "PodMonitor", "PrometheusRule"] {
        assert!(
            plain.iter().all(|m| m["kind"] != kind),
            "{kind} rendered by default"
        );
    }
    let (_, ha) = rendered(
        "food-delivery",
        &Some(chart("food-delivery").join("ci/ha-values.yaml")),
    );
    for hub in ["system", "restaurant", "ordering", "delivery"] {
        let policy = find(&ha, "NetworkPolicy", &format!("hub-{hub}"));
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        let port = |rule: &Value| rule["ports"][0]["port"].as_u64().unwrap();
        let client = rules.iter().find(|r| port(r) == 4222).unwrap();
        let label = format!("hub.fractal.dev/{hub}");
        assert_eq!(
            client["from"][0]["podSelector"]["matchLabels"][&label],
            "client"
        );
        let cluster = rules.iter().find(|r| port(r) == 6222).unwrap();
        assert_eq!(
            cluster["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            format!("hub-{hub}")
        );
        let monitor = rules.iter().find(|r| port(r) == 8222).unwrap();
        assert_eq!(
            monitor["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
        // Every workload that talks to the hub carries the label the policy admits.
        for workload in ha.iter().filter(|m| pod_spec(m).is_some()) {
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            let name = workload["metadata"]["name"].as_str().unwrap();
            let talks = name.starts_with(&format!("{hub}-"))
                || name == format!("hub-{hub}-provision")
                || (name.starts_with("bridge-") && name.contains(hub));
            if talks {
                assert_eq!(labels[&label], "client", "{name} may not reach hub {hub}");
            }
        }
        find(&ha, "PodMonitor", &format!("{hub}-monitoring"));
        find(&ha, "PrometheusRule", &format!("{hub}-monitoring"));
    }
    let dashboard = find(&ha, "ConfigMap", "food-delivery-dashboard");
    let json: Value = serde_json::from_str(dashboard["data"]["fractal.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    assert!(json["panels"].as_array().unwrap().len() >= 6);
}

#[test]
fn the_bridges_check_events_against_the_charts_descriptor_set_of_proto() {
    let file = chart("food-delivery").join("files/contracts.pb");
    let output = Command::new(program("fractal"))
        .args(["contracts", "build", "--check", "--out"])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, documents) = rendered("food-delivery", &None);
    let bridges: Vec<&Value> = documents
        .iter()
        .filter(|m| {
            m["kind"] == "Deployment"
                && m["metadata"]["labels"]["app.kubernetes.io/component"] == "bridge"
        })
        .collect();
    assert_eq!(bridges.len(), 6);
    for bridge in bridges {
        let spec = pod_spec(bridge).unwrap();
        let env = &spec["containers"][0]["env"];
        let told = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "BRIDGE_CONTRACTS");
        assert_eq!(
            told.map(|e| &e["value"]),
            Some(&Value::from(format!("{CONTRACTS_MOUNT}contracts.pb"))),
            "{}",
            id(bridge)
        );
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "contracts")
            .unwrap_or_else(|| panic!("{} mounts no contracts", id(bridge)));
        let map = find(
            &documents,
            "ConfigMap",
            volume["configMap"]["name"].as_str().unwrap(),
        );
        assert!(map["binaryData"]["contracts.pb"].is_string());
        // A new descriptor set restarts the bridge, which reads it at start.
        assert!(
            bridge["spec"]["template"]["metadata"]["annotations"]["checksum/contracts"].is_string(),
            "{}",
            id(bridge)
        );
    }
}
