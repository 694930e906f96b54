//! A connection to one hub: a NATS JetStream deployment owned by one subsystem.
//!
//! [`Hub::connect`] authenticates with whatever the hub asks for, reconnects forever with
//! backoff, and [`Hub::provision`] creates or updates the hub's two streams (events and faults)
//! so that calling it from every service at start-up is safe.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions};
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::config::{Problems, Secret, Validate, join};
use crate::wire;

/// How to reach a hub and what its streams look like.
#[derive(Debug, Clone, Deserialize)]
pub struct HubConfig {
    /// Name of the hub, a lower-case token (`ordering`), or its path when its system is part
    /// of a larger one (`north.ordering`). It is recorded in the provenance of every event
    /// published to it.
    pub name: String,
    /// Server URLs (`nats://host:4222`, or `tls://...`); more than one for a cluster.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// How to authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS settings; absent means TLS is used only if a URL says `tls://`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long to wait for the first connection before reporting failure, in seconds. The
    /// client keeps reconnecting in the background after that.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Timeout for JetStream requests and publish acknowledgements, in seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// The subject prefix of this client's reply subjects. A hub that grants each client
    /// only its own replies (`_INBOX.<client>.>`) gives each its own prefix.
    #[serde(default = "default_inbox_prefix")]
    pub inbox_prefix: String,
    /// The stream that stores every event published to the hub: the event lake. Settings
    /// not given keep their defaults (`EVENTS`, file storage, no limits).
    #[serde(default = "default_events_stream", deserialize_with = "events_stream")]
    pub events: StreamConfig,
    /// The stream that stores faults. Settings not given keep their defaults (`FAULTS`).
    #[serde(default = "default_faults_stream", deserialize_with = "faults_stream")]
    pub faults: StreamConfig,
}

fn default_urls() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_request_timeout_secs() -> u64 {
    10
}
fn default_inbox_prefix() -> String {
    "_INBOX".into()
}
fn default_events_stream() -> StreamConfig {
    StreamConfig::named("EVENTS")
}
fn default_faults_stream() -> StreamConfig {
    StreamConfig::named("FAULTS")
}
fn events_stream<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamConfig, D::Error> {
    Ok(StreamSettings::deserialize(d)?.onto(default_events_stream()))
}
fn faults_stream<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamConfig, D::Error> {
    Ok(StreamSettings::deserialize(d)?.onto(default_faults_stream()))
}

/// Some settings of a stream, as a configuration gives them: each one given replaces the
/// stream's own (see [`StreamConfig`] for what each means).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct StreamSettings {
    pub name: Option<String>,
    pub storage: Option<Storage>,
    pub replicas: Option<usize>,
    pub max_age_secs: Option<u64>,
    pub max_bytes: Option<i64>,
    pub max_messages: Option<i64>,
    pub duplicate_window_secs: Option<u64>,
}

impl StreamSettings {
    /// `stream` with these settings.
    pub fn onto(self, mut stream: StreamConfig) -> StreamConfig {
        if let Some(v) = self.name {
            stream.name = v;
        }
        if let Some(v) = self.storage {
            stream.storage = v;
        }
        if let Some(v) = self.replicas {
            stream.replicas = v;
        }
        if let Some(v) = self.max_age_secs {
            stream.max_age_secs = v;
        }
        if let Some(v) = self.max_bytes {
            stream.max_bytes = v;
        }
        if let Some(v) = self.max_messages {
            stream.max_messages = v;
        }
        if let Some(v) = self.duplicate_window_secs {
            stream.duplicate_window_secs = v;
        }
        stream
    }
}

impl HubConfig {
    /// A hub at `url` with default streams and no authentication.
    pub fn local(name: &str, url: &str) -> Self {
        HubConfig {
            name: name.into(),
            urls: vec![url.into()],
            auth: AuthConfig::None,
            tls: None,
            connect_timeout_secs: default_connect_timeout_secs(),
            request_timeout_secs: default_request_timeout_secs(),
            inbox_prefix: default_inbox_prefix(),
            events: default_events_stream(),
            faults: default_faults_stream(),
        }
    }
}

impl Validate for HubConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        // A hub of a system included in a larger one is named by its path (`north.ordering`).
        problems.check(join(path, "name"), wire::check_name(&self.name));
        if self.urls.is_empty() {
            problems.add(join(path, "urls"), "at least one server URL is needed");
        }
        for (i, raw) in self.urls.iter().enumerate() {
            let at = format!("{}[{i}]", join(path, "urls"));
            match url::Url::parse(raw) {
                Ok(url) if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") => problems.add(
                    at,
                    format!(
                        "`{raw}` has scheme `{}`; use nats://, tls://, ws:// or wss://",
                        url.scheme()
                    ),
                ),
                Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                    problems.add(at, format!("`{raw}` names no host"))
                }
                Ok(_) => {}
                Err(e) => problems.add(at, format!("`{raw}` is not a URL: {e}")),
            }
        }
        self.auth.validate(&join(path, "auth"), problems);
        if let Some(tls) = &self.tls {
            tls.validate(&join(path, "tls"), problems);
        }
        if self.connect_timeout_secs == 0 {
            problems.add(join(path, "connect_timeout_secs"), "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            problems.add(join(path, "request_timeout_secs"), "must be at least 1");
        }
        if self.inbox_prefix.split('.').any(|token| {
            token.is_empty()
                || token
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
        }) {
            problems.add(
                join(path, "inbox_prefix"),
                format!(
                    "`{}` is not a subject prefix (dot-separated tokens, no wildcards)",
                    self.inbox_prefix
                ),
            );
        }
        self.events.validate(&join(path, "events"), problems);
        self.faults.validate(&join(path, "faults"), problems);
        if self.events.name == self.faults.name {
            problems.add(
                join(path, "faults.name"),
                "the faults stream needs a name of its own",
            );
        }
    }
}

/// How to authenticate to a hub. Secrets can be given inline (best from the environment, e.g.
/// `FRACTAL_HUB__AUTH__PASSWORD`) or as a file that holds them.
#[derive(Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No authentication.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password, inline.
        password: Option<Secret>,
        /// A file whose content is the password.
        password_file: Option<PathBuf>,
    },
    /// A bearer token.
    Token {
        /// The token, inline.
        token: Option<Secret>,
        /// A file whose content is the token.
        token_file: Option<PathBuf>,
    },
    /// An NKey seed.
    Nkey {
        /// The seed, inline.
        seed: Option<Secret>,
        /// A file whose content is the seed.
        seed_file: Option<PathBuf>,
    },
    /// A `.creds` file (JWT and NKey seed), as issued by an operator.
    Creds {
        /// Path of the credentials file.
        path: PathBuf,
    },
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::None => f.write_str("None"),
            AuthConfig::UserPassword { user, .. } => write!(f, "UserPassword({user})"),
            AuthConfig::Token { .. } => f.write_str("Token(..)"),
            AuthConfig::Nkey { .. } => f.write_str("Nkey(..)"),
            AuthConfig::Creds { path } => write!(f, "Creds({})", path.display()),
        }
    }
}

impl AuthConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let one_of = |problems: &mut Problems, inline: bool, file: bool, key: &str| {
            if inline == file {
                problems.add(
                    path.to_owned(),
                    format!("give exactly one of `{key}` and `{key}_file`"),
                );
            }
        };
        match self {
            AuthConfig::None => {}
            AuthConfig::UserPassword {
                user,
                password,
                password_file,
            } => {
                if user.is_empty() {
                    problems.add(join(path, "user"), "must not be empty");
                }
                one_of(
                    problems,
                    password.is_some(),
                    password_file.is_some(),
                    "password",
                );
            }
            AuthConfig::Token { token, token_file } => {
                one_of(problems, token.is_some(), token_file.is_some(), "token")
            }
            AuthConfig::Nkey { seed, seed_file } => {
                one_of(problems, seed.is_some(), seed_file.is_some(), "seed")
            }
            AuthConfig::Creds { path: file } => {
                if file.as_os_str().is_empty() {
                    problems.add(join(path, "path"), "must not be empty");
                }
            }
        }
    }
}

/// TLS towards a hub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TlsConfig {
    /// Refuse to connect without TLS.
    #[serde(default = "default_true")]
    pub required: bool,
    /// PEM file of the certificate authorities to trust, in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

impl TlsConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.add(
                path.to_owned(),
                "`cert_file` and `key_file` go together for mutual TLS",
            );
        }
    }
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk: survives restarts. The right choice for an event lake.
    File,
    /// In memory: lost on restart.
    Memory,
}

/// Retention and limits of one of a hub's streams.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamConfig {
    /// Stream name.
    pub name: String,
    /// Where messages are stored.
    #[serde(default = "default_storage")]
    pub storage: Storage,
    /// Replicas in a clustered hub (1, 3 or 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Age after which messages are removed, in seconds; 0 keeps them forever (an event lake).
    #[serde(default)]
    pub max_age_secs: u64,
    /// Size after which the oldest messages are removed, in bytes; -1 for no limit.
    #[serde(default = "default_unlimited")]
    pub max_bytes: i64,
    /// Count after which the oldest messages are removed; -1 for no limit.
    #[serde(default = "default_unlimited")]
    pub max_messages: i64,
    /// How long JetStream remembers message ids to drop duplicates, in seconds.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
}

fn default_storage() -> Storage {
    Storage::File
}
fn default_replicas() -> usize {
    1
}
fn default_unlimited() -> i64 {
    -1
}
fn default_duplicate_window_secs() -> u64 {
    // A day: long enough that a bridge or service that was down for hours still has its
    // retries recognised as duplicates.
    24 * 60 * 60
}

impl StreamConfig {
    /// A file-backed stream with no limits.
    pub fn named(name: &str) -> Self {
        StreamConfig {
            name: name.into(),
            storage: default_storage(),
            replicas: default_replicas(),
            max_age_secs: 0,
            max_bytes: default_unlimited(),
            max_messages: default_unlimited(),
            duplicate_window_secs: default_duplicate_window_secs(),
        }
    }

    fn validate(&self, path: &str, problems: &mut Problems) {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            problems.add(
                join(path, "name"),
                format!(
                    "`{}` is not a stream name (no spaces, `.`, `*`, `>`, `/`)",
                    self.name
                ),
            );
        }
        if ![1, 3, 5].contains(&self.replicas) {
            problems.add(join(path, "replicas"), "must be 1, 3 or 5");
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            problems.add(
                join(path, "max_bytes"),
                "must be positive, or -1 for no limit",
            );
        }
        if self.max_messages == 0 || self.max_messages < -1 {
            problems.add(
                join(path, "max_messages"),
                "must be positive, or -1 for no limit",
            );
        }
        if self.duplicate_window_secs == 0 {
            problems.add(join(path, "duplicate_window_secs"), "must be at least 1");
        }
        if self.max_age_secs != 0 && self.duplicate_window_secs > self.max_age_secs {
            problems.add(
                join(path, "duplicate_window_secs"),
                "must not be longer than max_age_secs",
            );
        }
    }

    fn to_nats(&self, subjects: &str) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![subjects.to_owned()],
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.replicas,
            max_age: Duration::from_secs(self.max_age_secs),
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Each setting a client configures that `existing` has otherwise: `what is X on the hub, Y
/// here`.
fn differences(existing: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut found = Vec::new();
    let mut compare = |what: &str, hub: String, here: String| {
        if hub != here {
            found.push(format!("{what} is {hub} on the hub, {here} here"));
        }
    };
    compare(
        "subjects",
        format!("{:?}", existing.subjects),
        format!("{:?}", wanted.subjects),
    );
    compare(
        "storage",
        format!("{:?}", existing.storage).to_lowercase(),
        format!("{:?}", wanted.storage).to_lowercase(),
    );
    compare(
        "replicas",
        existing.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    compare(
        "max_age_secs",
        existing.max_age.as_secs().to_string(),
        wanted.max_age.as_secs().to_string(),
    );
    compare(
        "max_bytes",
        existing.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    compare(
        "max_messages",
        existing.max_messages.to_string(),
        wanted.max_messages.to_string(),
    );
    compare(
        "duplicate_window_secs",
        existing.duplicate_window.as_secs().to_string(),
        wanted.duplicate_window.as_secs().to_string(),
    );
    found
}

/// The time a read, write or publish may spend waiting for a hub that cannot answer (a node
/// gone, a cluster electing a leader, which takes a few seconds) before it fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RideOut(std::time::Instant);

impl RideOut {
    const LIMIT: Duration = Duration::from_secs(15);

    /// The operation starts now.
    pub(crate) fn start() -> Self {
        RideOut(std::time::Instant::now())
    }

    /// Whether `error` says the hub cannot answer, and the operation may still wait for it.
    pub(crate) fn waits_for(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        unavailable(error) && self.0.elapsed() < Self::LIMIT
    }

    /// The pause before the operation is tried again.
    pub(crate) async fn pause() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `error` (or a cause of it) says the hub cannot answer right now rather than that
/// the request was wrong: a timeout, no server listening for the request (a stream whose
/// cluster is electing a leader), a lost connection.
pub(crate) fn unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    const SIGNS: [&str; 8] = [
        // A publish of the same id is being stored: its outcome decides.
        "is in process",
        // A replicated stream or bucket cannot be placed while a node is restarting or has
        // not yet joined the cluster.
        "peer offline",
        "timed out",
        "no responders",
        "no stream found",
        "unavailable",
        "disconnected",
        "broken pipe",
    ];
    let mut cause = Some(error);
    while let Some(e) = cause {
        let text = e.to_string().to_lowercase();
        if SIGNS.iter().any(|sign| text.contains(sign)) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The kind of a [`HubError`], for callers that react differently to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubErrorKind {
    /// Credentials or TLS files could not be read.
    Credentials,
    /// The hub could not be reached or refused the connection.
    Connect,
    /// The hub refused to create or update a stream.
    Provision,
    /// A stream exists with settings other than this client's configuration.
    Mismatch,
    /// The hub's permissions do not let this client's credential do what it asked.
    Forbidden,
}

/// An operation on a hub failed.
#[derive(Debug, thiserror::Error)]
#[error("hub `{hub}`: {message}")]
pub struct HubError {
    kind: HubErrorKind,
    hub: String,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HubError {
    fn new(
        kind: HubErrorKind,
        hub: &str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        HubError {
            kind,
            hub: hub.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> HubErrorKind {
        self.kind
    }
}

/// A live connection to a hub.
#[derive(Debug, Clone)]
pub struct Hub {
    name: String,
    client: Client,
    jetstream: jetstream::Context,
    events_stream: String,
    faults_stream: String,
    config: HubConfig,
    credential: String,
    refusals: broadcast::Sender<Arc<str>>,
    /// The views opened through this connection.
    views: crate::view::Bindings,
}

/// What the server reported refusing this client: the subject of a publish or subscription
/// its permissions do not allow.
fn refused_subject(error: &async_nats::ServerError) -> Option<&str> {
    let async_nats::ServerError::Other(text) = error else {
        return None;
    };
    if !text.to_lowercase().contains("permissions violation") {
        return None;
    }
    let start = text.find('"')? + 1;
    let end = text.rfind('"')?;
    (start < end).then(|| &text[start..end])
}

/// The subjects a hub refuses a client from now on, as its server reports them.
#[derive(Debug)]
pub(crate) struct Refusals(broadcast::Receiver<Arc<str>>);

impl Refusals {
    /// The first subject refused for which `which` is true.
    pub(crate) async fn of(&mut self, which: impl Fn(&str) -> bool) -> Arc<str> {
        loop {
            match self.0.recv().await {
                Ok(subject) if which(&subject) => return subject,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

impl Hub {
    /// Connects to the hub. Fails if the first connection cannot be made within
    /// `connect_timeout_secs`; once connected, the client reconnects forever with backoff.
    /// Credentials that cannot be read, a seed that is not a user's nkey seed and a hub that
    /// refuses the credential are [`HubErrorKind::Credentials`] errors, which retrying cannot
    /// mend.
    pub async fn connect(config: &HubConfig) -> Result<Hub, HubError> {
        let hub = config.name.as_str();
        let credentials = |message: String, source: Box<dyn std::error::Error + Send + Sync>| {
            HubError::new(HubErrorKind::Credentials, hub, message, source)
        };
        let secret =
            |inline: &Option<Secret>, file: &Option<PathBuf>| -> Result<String, HubError> {
                match (inline, file) {
                    (Some(s), _) => Ok(s.expose().to_owned()),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(|s| s.trim().to_owned())
                        .map_err(|e| {
                            credentials(format!("cannot read `{}`", path.display()), e.into())
                        }),
                    (None, None) => Ok(String::new()),
                }
            };
        let (refusals, _) = broadcast::channel(64);
        let mut options = ConnectOptions::new()
            .name(format!("fractal:{hub}"))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(config.connect_timeout_secs))
            .request_timeout(Some(Duration::from_secs(config.request_timeout_secs)))
            .custom_inbox_prefix(&config.inbox_prefix)
            .event_callback({
                let hub = hub.to_owned();
                let refusals = refusals.clone();
                move |event| {
                    let hub = hub.clone();
                    let refusals = refusals.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                tracing::info!(hub, "Connected to hub.")
                            }
                            async_nats::Event::Disconnected => {
                                tracing::warn!(hub, "Disconnected from hub; reconnecting.")
                            }
                            async_nats::Event::ServerError(error) => {
                                if let Some(subject) = refused_subject(&error) {
                                    let _ = refusals.send(subject.into());
                                }
                                tracing::warn!(hub, %error, "The hub reported an error.")
                            }
                            other => tracing::debug!(hub, event = %other, "Hub connection event."),
                        }
                    }
                }
            });
        let credential;
        (options, credential) = match &config.auth {
            AuthConfig::None => (options, "no credential".to_owned()),
            AuthConfig::UserPassword {
                user,
                password,
                password_file,
            } => (
                options.user_and_password(user.clone(), secret(password, password_file)?),
                format!("user `{user}`"),
            ),
            AuthConfig::Token { token, token_file } => (
                options.token(secret(token, token_file)?),
                match token_file {
                    Some(file) => format!("the token in `{}`", file.display()),
                    None => "the configured token".to_owned(),
                },
            ),
            AuthConfig::Nkey { seed, seed_file } => {
                let from = match seed_file {
                    Some(file) => format!("`{}`", file.display()),
                    None => "the configured seed".to_owned(),
                };
                let seed = secret(seed, seed_file)?;
                let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                    credentials(format!("{from} does not hold an nkey seed"), e.into())
                })?;
                let public = key.public_key();
                if !public.starts_with('U') {
                    return Err(HubError {
                        kind: HubErrorKind::Credentials,
                        hub: hub.to_owned(),
                        message: format!(
                            "{from} holds the seed of an nkey that is not a user's (its public \
                             key starts with `{}`; a user's starts with `U`)",
                            &public[..1]
                        ),
                        source: None,
                    });
                }
                (options.nkey(seed), format!("nkey {public} from {from}"))
            }
            AuthConfig::Creds { path } => (
                options.credentials_file(path).await.map_err(|e| {
                    credentials(
                        format!("cannot read credentials `{}`", path.display()),
                        e.into(),
                    )
                })?,
                format!("the credentials in `{}`", path.display()),
            ),
        };
        if let Some(tls) = &config.tls {
            options = options.require_tls(tls.required);
            if let Some(ca) = &tls.ca_file {
                options = options.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| HubError::new(HubErrorKind::Connect, hub, "bad server URL", e))?;
        let client = options.connect(urls).await.map_err(|e| match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => credentials(
                match config.auth {
                    AuthConfig::None => format!(
                        "the hub at {} admits only known credentials, and this client has \
                         none (`auth`)",
                        config.urls.join(", ")
                    ),
                    _ => format!(
                        "the hub at {} refused {credential}: it is not one of the hub's \
                         credentials (a wrong or old seed?)",
                        config.urls.join(", ")
                    ),
                },
                e.into(),
            ),
            _ => HubError::new(
                HubErrorKind::Connect,
                hub,
                format!("cannot connect to {}", config.urls.join(", ")),
                e,
            ),
        })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .build(client.clone());
        Ok(Hub {
            name: config.name.clone(),
            client,
            jetstream,
            events_stream: config.events.name.clone(),
            faults_stream: config.faults.name.clone(),
            config: config.clone(),
            credential,
            refusals,
            views: crate::view::Bindings::default(),
        })
    }

    /// The views opened through this connection, by name.
    pub(crate) fn views(&self) -> &crate::view::Bindings {
        &self.views
    }

    /// The subjects the hub refuses this client from now on.
    pub(crate) fn refusals(&self) -> Refusals {
        Refusals(self.refusals.subscribe())
    }

    /// What the credential of this connection is, for messages: `nkey UAB… from <file>`.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// The error for `subject`, which the hub refused this client while it was doing `what`.
    pub(crate) fn forbidden(&self, what: &str, subject: &str) -> HubError {
        HubError {
            kind: HubErrorKind::Forbidden,
            hub: self.name.clone(),
            message: format!(
                "{what}: the hub does not let {} use `{subject}` (permissions violation)",
                self.credential
            ),
            source: None,
        }
    }

    /// Runs `operation`, unless first the hub refuses this client a subject for which `which`
    /// is true: then a [`HubErrorKind::Forbidden`] error for `what`, at once, where the
    /// operation would have waited for a reply that never comes.
    pub(crate) async fn unless_refused<T>(
        &self,
        what: &str,
        which: impl Fn(&str) -> bool,
        operation: impl std::future::Future<Output = T>,
    ) -> Result<T, HubError> {
        let mut refusals = self.refusals();
        tokio::select! {
            done = operation => Ok(done),
            subject = refusals.of(which) => Err(self.forbidden(what, &subject)),
        }
    }

    /// Connects, retrying with backoff until the hub answers, then makes sure its streams
    /// exist as configured ([`Hub::ensure_streams`]). `Ok(None)` if `shutdown` is cancelled
    /// first; an error only for what retrying cannot mend: a stream that exists with other
    /// settings, credentials that cannot be read.
    pub async fn connect_with_retry(
        config: &HubConfig,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Hub>, HubError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                let hub = Hub::connect(config).await?;
                hub.ensure_streams().await?;
                Ok::<_, HubError>(hub)
            };
            match attempt.await {
                Ok(hub) => return Ok(Some(hub)),
                Err(e)
                    if matches!(
                        e.kind(),
                        HubErrorKind::Mismatch
                            | HubErrorKind::Credentials
                            | HubErrorKind::Forbidden
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(hub = %config.name, error = %e, retry_in_ms = delay.as_millis() as u64, "Hub unavailable; retrying.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Creates the hub's streams, or updates them to match the configuration: the
    /// provisioning step of the hub's owner (`fractal up`, a deployment's provisioning job),
    /// with rights to administer streams. Services and bridges only [check](Hub::ensure_streams).
    pub async fn provision(&self) -> Result<(), HubError> {
        let events = format!("{}.>", wire::EVENTS_PREFIX);
        let faults = format!("{}.>", wire::FAULTS_PREFIX);
        for (config, subjects) in [(&self.config.events, events), (&self.config.faults, faults)] {
            self.jetstream
                .create_or_update_stream(config.to_nats(&subjects))
                .await
                .map_err(|e| {
                    HubError::new(
                        HubErrorKind::Provision,
                        &self.name,
                        format!("cannot create or update stream `{}`", config.name),
                        e,
                    )
                })?;
        }
        tracing::info!(hub = %self.name, events = %self.events_stream, faults = %self.faults_stream, "Hub streams provisioned.");
        Ok(())
    }

    /// Makes sure the hub's streams exist as this client's configuration says: creates one
    /// that is missing (a hub nobody provisioned, as in a test), and fails with
    /// [`HubErrorKind::Mismatch`], naming each setting and both values, when one exists with
    /// other settings. It never rewrites a stream: one definition of a hub's streams, applied
    /// by its provisioning step, holds for every client.
    pub async fn ensure_streams(&self) -> Result<(), HubError> {
        for (config, prefix) in [
            (&self.config.events, wire::EVENTS_PREFIX),
            (&self.config.faults, wire::FAULTS_PREFIX),
        ] {
            let wanted = config.to_nats(&format!("{prefix}.>"));
            let existing = self
                .unless_refused(
                    &format!("checking stream `{}`", config.name),
                    |subject| subject.starts_with("$JS.API.STREAM."),
                    self.jetstream.get_or_create_stream(wanted.clone()),
                )
                .await?
                .map_err(|e| {
                    HubError::new(
                        HubErrorKind::Provision,
                        &self.name,
                        format!("cannot find or create stream `{}`", config.name),
                        e,
                    )
                })?;
            let differences = differences(&existing.cached_info().config, &wanted);
            if !differences.is_empty() {
                return Err(HubError {
                    kind: HubErrorKind::Mismatch,
                    hub: self.name.clone(),
                    message: format!(
                        "stream `{}` exists with other settings than this client's: {}; the hub's \
                         streams are defined once, by its provisioning step (the topology's hub \
                         section), and every client must say the same",
                        config.name,
                        differences.join("; ")
                    ),
                    source: None,
                });
            }
        }
        Ok(())
    }

    /// Whether the connection is up right now: the readiness signal.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The hub's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the stream that stores the hub's events.
    pub fn events_stream(&self) -> &str {
        &self.events_stream
    }

    /// The name of the stream that stores the hub's faults.
    pub fn faults_stream(&self) -> &str {
        &self.faults_stream
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// How many replicas the hub's streams have, and its views are to have.
    pub fn replicas(&self) -> usize {
        self.config.events.replicas
    }
}

/// Whether a pull stream's `error` says its pull request was lost: the server it waited on is
/// gone (a node of a clustered hub died, and the consumer has a new leader) and no heartbeat
/// comes. The stream would wait out the request's 30 s expiry before asking again; a new
/// [`pull`] asks the consumer's current leader at once.
pub fn pull_lost(error: &async_nats::jetstream::consumer::pull::MessagesError) -> bool {
    error.kind() == async_nats::jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat
}

/// Starts pulling from `consumer` in batches of `batch`, retrying every second until the hub
/// answers; `None` once `shutdown` is cancelled. The hub sends a heartbeat every 2 s while it
/// has nothing to deliver, so a lost pull request shows within a few seconds ([`pull_lost`]).
pub async fn pull(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    batch: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<async_nats::jetstream::consumer::pull::Stream> {
    loop {
        let started = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        match started {
            Ok(stream) => return Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot pull from the hub; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permissions_violation_names_the_refused_subject() {
        let error = async_nats::ServerError::Other(
            "Permissions Violation for Publish to \"events.external.order.placed\"".into(),
        );
        assert_eq!(
            refused_subject(&error),
            Some("events.external.order.placed")
        );
        let other = async_nats::ServerError::Other("Maximum Payload Violation".into());
        assert_eq!(refused_subject(&other), None);
    }
}
