//! Service configuration: the shipped example, an omnibus file using every option, the
//! environment layer, and a broken file whose problems are all reported at once.

#![allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.

use std::path::Path;

use fractal::config::{Sources, load};
use fractal::consume::Start;
use fractal::hub::{AuthConfig, Storage};
use fractal::service::ServiceConfig;
use fractal::telemetry::LogFormat;

fn file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn load_file(path: &Path) -> Result<ServiceConfig, fractal::config::ConfigError> {
    load(&Sources {
        file: Some(path),
        env_prefix: "FRACTAL_TEST_UNSET_",
    })
}

#[test]
fn the_shipped_example_parses() {
    let config = load_file(&file("service.example.toml")).expect("example is valid");
    assert_eq!(config.source(), "ordering/checkout");
    assert_eq!(config.hub.events.name, "EVENTS");
    assert_eq!(config.consumer.max_deliveries, 5);
}

#[test]
fn an_omnibus_file_sets_every_option() {
    let config = load_file(&file("tests/config/omnibus.toml")).expect("omnibus is valid");
    assert_eq!(config.trace_name(), "delivery-dispatch");
    let hub = &config.hub;
    assert_eq!(hub.urls, ["nats://hub-0:4222", "tls://hub-1:4222"]);
    assert_eq!((hub.connect_timeout_secs, hub.request_timeout_secs), (3, 4));
    match &hub.auth {
        AuthConfig::UserPassword {
            user,
            password,
            password_file,
        } => {
            assert_eq!(user, "dispatch");
            assert!(password.is_some() && password_file.is_none());
        }
        other => panic!("unexpected auth {other:?}"),
    }
    assert!(
        !format!("{:?}", hub.auth).contains("real-life"),
        "secret printed"
    );
    let tls = hub.tls.as_ref().expect("tls");
    assert!(
        tls.required && tls.ca_file.is_some() && tls.cert_file.is_some() && tls.key_file.is_some()
    );
    let events = &hub.events;
    assert_eq!(events.name, "DELIVERY_EVENTS");
    assert_eq!(events.storage, Storage::Memory);
    assert_eq!(events.replicas, 3);
    assert_eq!(events.max_age_secs, 31_536_000);
    assert_eq!(events.max_bytes, 1_073_741_824);
    assert_eq!(events.max_messages, 1_000_000);
    assert_eq!(events.duplicate_window_secs, 3600);
    assert_eq!(hub.faults.name, "DELIVERY_FAULTS");
    assert_eq!(hub.faults.storage, Storage::File);
    let consumer = &config.consumer;
    assert_eq!(consumer.durable.as_deref(), Some("dispatch-v2"));
    assert_eq!(consumer.start, Start::New);
    assert_eq!(
        (
            consumer.concurrency,
            consumer.max_ack_pending,
            consumer.batch
        ),
        (8, 512, 64)
    );
    assert_eq!((consumer.ack_wait_secs, consumer.max_deliveries), (60, 7));
    assert_eq!(
        (consumer.retry_initial_ms, consumer.retry_max_ms),
        (50, 5000)
    );
    assert_eq!(consumer.lag_poll_secs, 5);
    assert_eq!(config.admin.listen, "127.0.0.1:9191");
    assert_eq!(config.log.level, "fractal=debug,info");
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let error = load_file(&file("tests/config/broken.toml")).unwrap_err();
    let problems: Vec<(String, String)> = error
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    assert_eq!(problems.len(), 3, "{error}");
    assert_eq!(problems[0].0, "hub.colour");
    assert_eq!(problems[0].1, "unknown key");
    assert_eq!(problems[1].0, "hub.urls[0]");
    assert!(problems[1].1.contains("http//not-a-url"), "{error}");
    assert_eq!(problems[2].0, "consumer.concurrency");
    let text = error.to_string();
    assert!(
        text.starts_with("3 problems in the configuration:"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let error = load_file(Path::new("/nonexistent/service.toml")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/service.toml"),
        "{error}"
    );
}

#[test]
fn the_environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("CHECKOUT_CONSUMER__CONCURRENCY", "3");
        jail.set_env("CHECKOUT_HUB__NAME", "override");
        jail.set_env("CHECKOUT_HUB__AUTH__TYPE", "token");
        jail.set_env("CHECKOUT_HUB__AUTH__TOKEN", "s3cret");
        let config: ServiceConfig = load(&Sources {
            file: Some(&file("service.example.toml")),
            env_prefix: "CHECKOUT_",
        })
        .expect("valid");
        assert_eq!(config.consumer.concurrency, 3);
        assert_eq!(config.hub.name, "override");
        assert!(matches!(
            config.hub.auth,
            AuthConfig::Token { token: Some(_), .. }
        ));
        Ok(())
    });
}

#[test]
fn a_wrong_type_names_its_source() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("CHECKOUT_CONSUMER__CONCURRENCY", "many");
        let error = load::<ServiceConfig>(&Sources {
            file: Some(&file("service.example.toml")),
            env_prefix: "CHECKOUT_",
        })
        .unwrap_err();
        let problem = error.problems.iter().next().expect("a problem");
        assert_eq!(problem.path, "consumer.concurrency");
        assert!(problem.message.contains("CHECKOUT_"), "{error}");
        Ok(())
    });
}
