//! Layered configuration: built-in defaults, then a TOML file, then environment variables with
//! a per-program prefix and `__` for nesting (`FRACTAL_HUB__URL`).
//!
//! Loading collects every problem before it reports: unknown keys, values of the wrong type and
//! values that fail validation, each with its path. Validation is pure, so a program can check
//! its configuration and exit without connecting anywhere.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// A configuration that can check its own values.
pub trait Validate {
    /// Adds every problem found under `path` (`""` at the top) to `problems`.
    fn validate(&self, path: &str, problems: &mut Problems);
}

/// One problem in a configuration, with the path of the offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key (`hub.url`), or empty for the whole file.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, at `path`.
    pub fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }

    /// The problems found so far.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when no problem was found.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self })
        }
    }
}

/// Joins a parent path and a key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A configuration that could not be loaded, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, in the order found.
    pub problems: Problems,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.0.len();
        write!(
            f,
            "{count} problem{} in the configuration:",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in self.problems.iter() {
            if problem.path.is_empty() {
                write!(f, "\n  - {}", problem.message)?;
            } else {
                write!(f, "\n  - {}: {}", problem.path, problem.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where a program's configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// The TOML file given with `--config`, if any.
    pub file: Option<&'a Path>,
    /// The environment variable prefix, including its trailing `_` (`FRACTAL_`).
    pub env_prefix: &'a str,
}

/// Loads a configuration from defaults, the file and the environment, and validates it.
pub fn load<T: DeserializeOwned + Validate>(sources: &Sources<'_>) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(file) = sources.file {
        if !file.is_file() {
            let mut problems = Problems::default();
            problems.add(
                "",
                format!(
                    "config file `{}` does not exist or is not a file",
                    file.display()
                ),
            );
            return Err(ConfigError { problems });
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    let prefix = sources.env_prefix.to_owned();
    figment = figment.merge(
        Env::prefixed(sources.env_prefix)
            .split("__")
            .filter(move |key| {
                let value = std::env::var(format!("{prefix}{key}")).unwrap_or_default();
                !service_link(key.as_str(), &value)
            }),
    );
    from_figment(figment)
}

/// Whether `name=value` (the name without the program's prefix) is one of the variables
/// Kubernetes sets in a pod for each Service of its namespace (`<SERVICE>_SERVICE_HOST`,
/// `<SERVICE>_SERVICE_PORT[_<NAME>]`, `<SERVICE>_PORT`, `<SERVICE>_PORT_<N>_<PROTO>[_PROTO|_PORT|
/// _ADDR]`), in the shape Kubernetes gives them: a Service named `ordering-gateway` gives the
/// `ordering` program `ORDERING_GATEWAY_PORT=tcp://10.0.0.1:50071`. Such a variable is not
/// configuration and is ignored. Nothing else is: a real key is nested with `__` or is not in
/// these shapes, so a mistyped one is still an unknown key.
pub fn service_link(name: &str, value: &str) -> bool {
    let name = name.to_ascii_uppercase();
    if name.contains("__") {
        return false;
    }
    let port = |v: &str| v.parse::<u16>().is_ok();
    let address = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let protocol = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    let url = |v: &str| {
        v.split_once("://").is_some_and(|(scheme, rest)| {
            protocol(&scheme.to_ascii_uppercase())
                && rest
                    .rsplit_once(':')
                    .is_some_and(|(host, p)| address(host.trim_matches(['[', ']'])) && port(p))
        })
    };
    if name.ends_with("_SERVICE_HOST") {
        return address(value);
    }
    if name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return port(value);
    }
    // `<SERVICE>_PORT_<N>_<PROTO>` and its `_PROTO`, `_PORT` and `_ADDR` parts.
    if let Some(at) = name.rfind("_PORT_") {
        let tail: Vec<&str> = name[at + "_PORT_".len()..].split('_').collect();
        match tail.as_slice() {
            [n, p] if port(n) && protocol(p) => return url(value),
            [n, p, "PROTO"] if port(n) && protocol(p) => {
                return protocol(&value.to_ascii_uppercase());
            }
            [n, p, "PORT"] if port(n) && protocol(p) => return port(value),
            [n, p, "ADDR"] if port(n) && protocol(p) => return address(value),
            _ => {}
        }
    }
    name.ends_with("_PORT") && url(value)
}

/// Loads a configuration from TOML text alone (defaults → text), as tools and tests do.
pub fn from_toml<T: DeserializeOwned + Validate>(text: &str) -> Result<T, ConfigError> {
    from_figment(Figment::from(Toml::string(text)))
}

fn from_figment<T: DeserializeOwned + Validate>(figment: Figment) -> Result<T, ConfigError> {
    let mut problems = Problems::default();

    // Unknown keys are found on a plain copy of the data, so that they are reported together
    // with every other problem instead of stopping at the first one.
    match figment.extract::<serde_json::Value>() {
        Ok(value) => {
            let _ = serde_ignored::deserialize(value, |path| {
                problems.add(path.to_string(), "unknown key")
            })
            .map(|_: T| ());
        }
        Err(errors) => {
            add_figment_errors(errors, &mut problems);
            return Err(ConfigError { problems });
        }
    }

    match figment.extract::<T>() {
        Ok(config) => {
            config.validate("", &mut problems);
            problems.into_result().map(|()| config)
        }
        Err(errors) => {
            add_figment_errors(errors, &mut problems);
            Err(ConfigError { problems })
        }
    }
}

fn add_figment_errors(errors: figment::Error, problems: &mut Problems) {
    for error in errors {
        let path = error.path.join(".");
        let mut message = error.kind.to_string();
        if let Some(source) = error.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            message = format!("{message} (from {source})");
        } else if let Some(metadata) = &error.metadata {
            message = format!("{message} (from {})", metadata.name);
        }
        problems.add(path, message);
    }
}

/// A secret value (password, token, seed): read from config or the environment, never printed.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default = "default_count")]
        count: u32,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        name: String,
    }

    fn default_count() -> u32 {
        3
    }

    impl Validate for Sample {
        fn validate(&self, path: &str, problems: &mut Problems) {
            if self.count == 0 {
                problems.add(join(path, "count"), "must be at least 1");
            }
            if self.inner.name.is_empty() {
                problems.add(join(path, "inner.name"), "must not be empty");
            }
        }
    }

    #[test]
    fn kubernetes_service_links_are_recognised_and_nothing_else() {
        for (name, value) in [
            ("GATEWAY_PORT", "tcp://10.0.0.1:50071"),
            ("GATEWAY_SERVICE_HOST", "10.0.0.1"),
            ("GATEWAY_SERVICE_PORT", "50071"),
            ("GATEWAY_SERVICE_PORT_GRPC", "50071"),
            ("GATEWAY_PORT_50071_TCP", "tcp://10.0.0.1:50071"),
            ("GATEWAY_PORT_50071_TCP_PROTO", "tcp"),
            ("GATEWAY_PORT_50071_TCP_PORT", "50071"),
            ("GATEWAY_PORT_50071_TCP_ADDR", "10.0.0.1"),
            ("HUB_PORT", "tcp://[fd00::1]:4222"),
        ] {
            assert!(service_link(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("HUB__URLS", "tcp://10.0.0.1:4222"),
            ("GATEWAY_PORT", "50071"),
            ("GATEWAY_PORT", "http://10.0.0.1:50071"),
            ("GATEWAY_SERVICE_HOST", "gateway.local"),
            ("GATEWAY_PORT_50071_TCP_PROTO", "http"),
            ("GRPC__LISTEN", "0.0.0.0:50071"),
            ("SERVIC", "checkout"),
        ] {
            assert!(!service_link(name, value), "{name}={value}");
        }
    }

    #[test]
    fn reports_unknown_keys_and_bad_values_together() {
        let err = from_toml::<Sample>("count = 0\nextra = 1\n[inner]\nname = ''\ncolour = 'red'\n")
            .unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["extra", "inner.colour", "count", "inner.name"]);
        let text = err.to_string();
        assert!(text.starts_with("4 problems"), "{text}");
        assert!(text.contains("inner.colour: unknown key"), "{text}");
    }

    #[test]
    fn defaults_apply_and_types_are_checked() {
        let ok = from_toml::<Sample>("[inner]\nname = 'x'\n").expect("valid");
        assert_eq!(ok.count, 3);
        let err = from_toml::<Sample>("count = 'many'\n[inner]\nname = 'x'\n").unwrap_err();
        assert_eq!(
            err.problems.iter().next().map(|p| p.path.as_str()),
            Some("count")
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::from("hunter2".to_string());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
