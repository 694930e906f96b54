//! Logs and traces: a `tracing` subscriber for every program, OpenTelemetry export over OTLP
//! (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the W3C trace context carried in NATS
//! headers so that one trace crosses every hub and bridge.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Problems, Validate, join};

/// How a program logs.
#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax (`info`, `fractal=debug,info`). `RUST_LOG` wins if set.
    #[serde(default = "default_level")]
    pub level: String,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Line format of the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Validate for LogConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = EnvFilter::builder().parse(&self.level) {
            problems.add(
                join(path, "level"),
                format!("`{}` is not a log filter: {e}", self.level),
            );
        }
    }
}

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("Could not flush traces: {e}");
        }
    }
}

/// Installs the global `tracing` subscriber for a program named `service_name`
/// (`<subsystem>-<service>`; `OTEL_SERVICE_NAME` wins if set). Must be called inside a Tokio
/// runtime when traces are exported.
pub fn init(service_name: &str, log: &LogConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::builder()
            .parse(&env)
            .map_err(|e| TelemetryError::Filter(format!("RUST_LOG `{env}`: {e}")))?,
        _ => EnvFilter::builder()
            .parse(&log.level)
            .map_err(|e| TelemetryError::Filter(format!("log.level `{}`: {e}", log.level)))?,
    };
    // Colour only on a terminal (not in log files such as `fractal up`'s), and never with
    // NO_COLOR set.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(colour)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()));
    let provider = if endpoint_set {
        let name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| service_name.to_owned());
        Some(otlp_provider(&name)?)
    } else {
        None
    };
    // Spans at info and above are exported whatever the log filter says; debug and trace
    // spans of libraries (HTTP/2, the exporter's own calls) are not.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("fractal"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Installed(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter (`RUST_LOG` or `log.level`) does not parse.
    #[error("the log filter {0}")]
    Filter(String),
    /// The OTLP endpoint the environment names is not one spans can be exported to.
    #[error("{0}")]
    Endpoint(String),
    /// A global subscriber was already installed.
    #[error("cannot install the tracing subscriber: {0}")]
    Installed(String),
}

/// Where spans go, from the standard variables: the variable that named it, the endpoint with
/// its scheme, and whether it takes TLS. An endpoint without a scheme is `https://` unless
/// `OTEL_EXPORTER_OTLP_INSECURE` is `true`, as the OTLP exporter specification says.
fn otlp_endpoint(
    traces: Option<String>,
    general: Option<String>,
    insecure: bool,
) -> Result<Option<(&'static str, String, bool)>, String> {
    let (variable, endpoint) = match (traces, general) {
        (Some(e), _) if !e.is_empty() => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
        (_, Some(e)) if !e.is_empty() => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
        _ => return Ok(None),
    };
    let endpoint = match endpoint.split_once("://") {
        Some((scheme, _)) if scheme == "http" || scheme == "https" => endpoint.clone(),
        Some((scheme, _)) => {
            return Err(format!(
                "{variable} `{endpoint}`: the scheme is `{scheme}`; OTLP over gRPC takes                  `http://` or `https://` (for example `https://collector:4317`)"
            ));
        }
        None if insecure => format!("http://{endpoint}"),
        None => format!("https://{endpoint}"),
    };
    let uri: tonic::codegen::http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{variable} `{endpoint}` is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{variable} `{endpoint}` names no host"));
    }
    let tls = endpoint.starts_with("https://");
    Ok(Some((variable, endpoint, tls)))
}

/// A tracer provider that exports spans over OTLP gRPC to the endpoint the standard
/// environment variables name; over TLS (with the Mozilla roots compiled in) for `https://`.
pub fn otlp_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let insecure = std::env::var("OTEL_EXPORTER_OTLP_INSECURE")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TRACES_INSECURE"))
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let found = otlp_endpoint(
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok(),
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
        insecure,
    )
    .map_err(TelemetryError::Endpoint)?;
    let exporter = span_exporter(found).map_err(TelemetryError::Endpoint)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OTLP gRPC exporter for an endpoint found by [`otlp_endpoint`] (none: the library's
/// default).
fn span_exporter(
    found: Option<(&'static str, String, bool)>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let mut variable = "OTEL_EXPORTER_OTLP_ENDPOINT";
    if let Some((named_by, endpoint, tls)) = found {
        variable = named_by;
        builder = builder.with_endpoint(endpoint);
        if tls {
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot export spans to the endpoint {variable} names: {e}"))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the trace context of `span` into `headers` (`traceparent`, `tracestate`).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Reads the trace context from `headers`.
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => opentelemetry::Context::new(),
    }
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) {
    use opentelemetry::trace::TraceContextExt as _;
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace context of `span` as a map (`traceparent`, `tracestate`), to keep with state that
/// later work should be traced under, such as a view entry.
pub fn carrier(span: &tracing::Span) -> std::collections::HashMap<String, String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// Makes `span` a child of the trace context kept in `carrier` (see [`carrier`]), if any.
pub fn continue_from(span: &tracing::Span, carrier: &std::collections::HashMap<String, String>) {
    use opentelemetry::trace::TraceContextExt as _;
    let parent = TraceContextPropagator::new().extract(carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otlp_endpoint_takes_its_scheme_or_the_specifications_default() {
        let found = |traces: Option<&str>, general: Option<&str>, insecure| {
            otlp_endpoint(traces.map(Into::into), general.map(Into::into), insecure)
        };
        assert_eq!(found(None, None, false), Ok(None));
        assert_eq!(
            found(None, Some("collector:4317"), false),
            Ok(Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4317".into(),
                true
            )))
        );
        assert_eq!(
            found(None, Some("collector:4317"), true),
            Ok(Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4317".into(),
                false
            )))
        );
        assert_eq!(
            found(
                Some("http://jaeger:4317"),
                Some("https://other:4317"),
                false
            ),
            Ok(Some((
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://jaeger:4317".into(),
                false
            )))
        );
        let bad = found(None, Some("grpc://collector:4317"), false).unwrap_err();
        assert!(
            bad.contains("OTEL_EXPORTER_OTLP_ENDPOINT `grpc://collector:4317`")
                && bad.contains("`http://` or `https://`"),
            "{bad}"
        );
        let bad = found(None, Some("https://"), false).unwrap_err();
        assert!(
            bad.contains("OTEL_EXPORTER_OTLP_ENDPOINT `https://`"),
            "{bad}"
        );
    }

    #[tokio::test]
    async fn an_https_endpoint_builds_an_exporter_over_tls() {
        let tls = otlp_endpoint(None, Some("https://otlp.example.com:4317".into()), false).unwrap();
        assert!(span_exporter(tls).is_ok());
        let plain = otlp_endpoint(None, Some("http://127.0.0.1:4317".into()), false).unwrap();
        assert!(span_exporter(plain).is_ok());
    }
}
