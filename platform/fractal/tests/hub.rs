//! Connecting to hubs that ask for credentials, and hubs that refuse.

use fractal::config::Secret;
use fractal::hub::{AuthConfig, HubErrorKind};
use fractal::proto::Header;
use fractal::publish::PublishErrorKind;
use fractal::{Hub, NewEvent, Publisher};
use fractal_testkit::{NatsServer, ServerOptions};

fn secured() -> NatsServer {
    NatsServer::start_with(ServerOptions {
        domain: None,
        extra: r#"authorization { users: [ { user: "checkout", password: "s3cret" } ] }"#.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn user_and_password_from_config_or_file() {
    let server = secured();
    let mut config = server.hub_config("alpha");
    config.connect_timeout_secs = 2;

    config.auth = AuthConfig::UserPassword {
        user: "checkout".into(),
        password: Some(Secret::from("s3cret".to_string())),
        password_file: None,
    };
    let hub = Hub::connect(&config).await.expect("inline password");
    hub.provision().await.expect("provisions");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    config.auth = AuthConfig::UserPassword {
        user: "checkout".into(),
        password: None,
        password_file: Some(file),
    };
    Hub::connect(&config).await.expect("password from a file");

    config.auth = AuthConfig::UserPassword {
        user: "checkout".into(),
        password: Some(Secret::from("wrong".to_string())),
        password_file: None,
    };
    // Refused credentials are not retried, and the error names them.
    let error = Hub::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), HubErrorKind::Credentials);
    assert!(error.to_string().contains("user `checkout`"), "{error}");
}

#[tokio::test]
async fn a_token() {
    let server = NatsServer::start_with(ServerOptions {
        domain: None,
        extra: r#"authorization { token: "t0ken" }"#.into(),
        ..Default::default()
    });
    let mut config = server.hub_config("alpha");
    config.auth = AuthConfig::Token {
        token: Some(Secret::from("t0ken".to_string())),
        token_file: None,
    };
    Hub::connect(&config).await.expect("token accepted");
}

#[tokio::test]
async fn unreadable_credentials_are_named() {
    let server = NatsServer::start();
    let mut config = server.hub_config("alpha");
    config.auth = AuthConfig::Creds {
        path: "/nonexistent/hub.creds".into(),
    };
    let error = Hub::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), HubErrorKind::Credentials);
    assert!(
        error.to_string().contains("/nonexistent/hub.creds"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_hub_is_a_connect_error() {
    let port = fractal_testkit::free_port();
    let mut config = fractal::HubConfig::local("alpha", &format!("nats://127.0.0.1:{port}"));
    config.connect_timeout_secs = 1;
    let error = Hub::connect(&config).await.unwrap_err();
    assert_eq!(error.kind(), HubErrorKind::Connect);
    assert!(error.to_string().contains(&port.to_string()), "{error}");
}

#[tokio::test]
async fn a_hub_without_streams_refuses_events_clearly() {
    let server = NatsServer::start();
    let mut config = server.hub_config("alpha");
    config.request_timeout_secs = 2;
    let hub = Hub::connect(&config).await.expect("connects");
    let error = Publisher::new(&hub, "alpha/test")
        .publish(NewEvent::new("thing.happened", "k", &Header::default()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), PublishErrorKind::Refused);
    assert!(
        error.to_string().contains("events.internal.thing.happened"),
        "{error}"
    );
}

#[tokio::test]
async fn an_nkey_seed_inline_or_from_a_file() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(ServerOptions {
        domain: None,
        extra: format!(
            "authorization {{ users: [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ),
        ..Default::default()
    });
    let seed = user.seed().unwrap();
    let mut config = server.hub_config("alpha");
    config.auth = AuthConfig::Nkey {
        seed: Some(Secret::from(seed.clone())),
        seed_file: None,
    };
    Hub::connect(&config).await.expect("inline seed");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.nk");
    std::fs::write(&file, format!("{seed}\n")).unwrap();
    config.auth = AuthConfig::Nkey {
        seed: None,
        seed_file: Some(file),
    };
    Hub::connect(&config).await.expect("seed from a file");
}

/// A CA, and a certificate for 127.0.0.1 signed by it, made with the openssl command.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext.cnf written");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name);
    let server = NatsServer::start_with(ServerOptions {
        domain: None,
        extra: format!(
            "tls {{ cert_file: {:?}\n key_file: {:?} }}",
            path("server.pem"),
            path("server-key.pem")
        ),
        ..Default::default()
    });
    let mut config = server.hub_config("alpha");
    config.connect_timeout_secs = 3;
    config.tls = Some(fractal::hub::TlsConfig {
        required: true,
        ca_file: Some(path("ca.pem")),
        cert_file: None,
        key_file: None,
    });
    let hub = Hub::connect(&config)
        .await
        .expect("TLS with the private CA");
    hub.provision().await.expect("provisions over TLS");

    // Without the CA the server's certificate is not trusted.
    config.tls = Some(fractal::hub::TlsConfig {
        required: true,
        ca_file: None,
        cert_file: None,
        key_file: None,
    });
    assert!(Hub::connect(&config).await.is_err());
}
