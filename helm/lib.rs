//! Rendering the charts for the checks in `tests/`: the tools `scripts/ensure-k8s-tools`
//! installs, `helm template` into JSON values, and the parts of a manifest the checks read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub use serde_json::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("helm/ has a parent")
        .to_path_buf()
}

/// A tool `scripts/ensure-k8s-tools` installs (`helm`, `kubernetes-validate`, `yamllint`),
/// from the folder it named in `FRACTAL_K8S_TOOLS` or `.fractal/tools/bin`.
pub fn tool(name: &str) -> PathBuf {
    let folder = std::env::var_os("FRACTAL_K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".fractal/tools/bin"));
    let path = folder.join(name);
    assert!(
        path.exists(),
        "{} not found: run scripts/ensure-k8s-tools (scripts/test does)",
        path.display()
    );
    path
}

/// A program of the workspace, built beside this test (`target/<profile>/<name>`).
pub use fractal_testkit::workspace_binary as program;

/// A chart's folder: `helm/<name>`.
pub fn chart(name: &str) -> PathBuf {
    root().join("helm").join(name)
}

/// Builds each chart's dependencies (the library chart) once per test run.
fn dependencies() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        for name in ["fractal-subsystem", "food-delivery"] {
            let output = Command::new(tool("helm"))
                .args(["dependency", "build", "--skip-refresh"])
                .arg(chart(name))
                .output()
                .expect("helm runs");
            assert!(
                output.status.success(),
                "helm dependency build {name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    });
}

/// Runs `helm` with `args` once the charts' dependencies are built.
pub fn helm(args: &[&str]) -> Output {
    dependencies();
    Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("helm runs")
}

/// `helm template` of chart `name` into namespace `namespace` with `values` files and `sets`
/// (`key=value`): every document, or helm's error.
pub fn render(
    name: &str,
    namespace: &str,
    values: &[&Path],
    sets: &[&str],
) -> Result<(String, Vec<Value>), String> {
    let chart = chart(name);
    let mut args = vec![
        "template".to_owned(),
        name.to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        namespace.to_owned(),
    ];
    for file in values {
        args.push("--values".to_owned());
        args.push(file.display().to_string());
    }
    for set in sets {
        args.push("--set".to_owned());
        args.push((*set).to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = helm(&args);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).expect("helm writes UTF-8");
    let documents = parse(&text);
    Ok((text, documents))
}

/// The documents of a YAML stream, empty ones left out.
pub fn parse(text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document).expect("rendered YAML parses");
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

/// `kind/name` of a manifest.
pub fn id(manifest: &Value) -> String {
    format!(
        "{}/{}",
        manifest["kind"].as_str().unwrap_or("?"),
        manifest["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The pod template of a workload (Deployment, StatefulSet, Job) or the spec of a Pod.
pub fn pod_spec(manifest: &Value) -> Option<&Value> {
    match manifest["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(&manifest["spec"]["template"]["spec"])
        }
        "Pod" => Some(&manifest["spec"]),
        _ => None,
    }
}

/// The manifest of `kind` named `name`.
pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

/// Where a bridge's container finds the contracts' ConfigMap.
pub const CONTRACTS_MOUNT: &str = "/etc/fractal/contracts/";

/// Writes the descriptor sets of the rendered contracts ConfigMaps into `dir` (as the kubelet
/// would mount them at [`CONTRACTS_MOUNT`]); returns how many there were.
pub fn mount_contracts(documents: &[Value], dir: &Path) -> usize {
    use base64::Engine as _;
    let mut mounted = 0;
    for map in documents.iter().filter(|m| {
        m["kind"] == "ConfigMap"
            && m["metadata"]["labels"]["app.kubernetes.io/component"] == "contracts"
    }) {
        let encoded = map["binaryData"]["contracts.pb"]
            .as_str()
            .unwrap_or_else(|| panic!("{} holds no contracts.pb", id(map)));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("{}: contracts.pb is not base64: {e}", id(map)));
        std::fs::write(dir.join("contracts.pb"), bytes).expect("the descriptor set is written");
        mounted += 1;
    }
    mounted
}

/// What a rendered Deployment's container runs: its program (a name in `/usr/local/bin`),
/// the config file its `--config` names, that file's text from the ConfigMap mounted there,
/// and the container itself.
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    /// The program's name.
    pub program: String,
    /// The config file's name (`config.toml`, `bridge.toml`).
    pub file: String,
    /// The config file's text.
    pub config: String,
    /// The container's manifest.
    pub container: &'a Value,
}

/// What the first container of `deployment` runs, with its config read from `documents`.
pub fn runs<'a>(documents: &[Value], deployment: &'a Value) -> Runs<'a> {
    let spec = pod_spec(deployment).expect("a workload");
    let container = &spec["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("a command")
        .iter()
        .map(|c| c.as_str().expect("a word"))
        .collect();
    let base = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_owned()
    };
    let (program, file) = (base(command[0]), base(command[2]));
    let config_map = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_else(|| panic!("{} mounts no config", id(deployment)));
    let config = find(documents, "ConfigMap", config_map)["data"][&file]
        .as_str()
        .unwrap_or_else(|| panic!("no {file} in ConfigMap {config_map}"))
        .to_owned();
    Runs {
        program,
        file,
        config,
        container,
    }
}
