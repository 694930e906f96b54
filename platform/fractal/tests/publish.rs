//! Publishing against a real hub.

use fractal::proto::Header;
use fractal::{NewEvent, Publisher, Scope};
use fractal_testkit::{NatsServer, stream_messages};

#[tokio::test]
async fn publishing_twice_with_the_same_id_stores_one_event() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let publisher = Publisher::new(&hub, "alpha/test");
    let event = NewEvent::new("thing.happened", "k1", &Header::default());

    let first = publisher
        .publish(event.clone())
        .await
        .expect("first publish");
    let second = publisher.publish(event).await.expect("second publish");

    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let stored = stream_messages(&hub, hub.events_stream()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject.as_str(), "events.internal.thing.happened");
}

#[tokio::test]
async fn pipelined_publishes_keep_their_order() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let publisher = Publisher::new(&hub, "alpha/test");
    let events: Vec<_> = (0..3000)
        .map(|i| {
            let payload = Header {
                name: "n".into(),
                value: i.to_string(),
            };
            NewEvent::external("thing.counted", "k", &payload)
        })
        .collect();
    let ids: Vec<_> = events.iter().map(NewEvent::id).collect();

    let published = publisher.publish_all(events).await.expect("published");

    assert_eq!(published.iter().map(|p| p.id).collect::<Vec<_>>(), ids);
    assert!(published.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let stored = stream_messages(&hub, hub.events_stream()).await;
    assert_eq!(stored.len(), 3000);
    let event = fractal::Event::decode(
        &stored[7].subject,
        stored[7].headers.as_ref(),
        stored[7].payload.clone(),
    )
    .expect("decodes");
    assert_eq!(event.scope, Scope::External);
    assert_eq!(event.payload::<Header>().expect("payload").value, "7");
    assert_eq!(event.source, "alpha/test");
    assert_eq!(event.path, ["alpha"]);
}

#[tokio::test]
async fn an_invalid_event_type_is_refused_before_sending() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let publisher = Publisher::new(&hub, "alpha/test");
    let error = publisher
        .publish(NewEvent::new("Bad Type", "k", &Header::default()))
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        fractal::publish::PublishErrorKind::InvalidEvent
    );
    assert!(error.to_string().contains("Bad Type"), "{error}");
    // A key is carried in a header, where a line break cannot go: refused, not a panic.
    let error = publisher
        .publish(NewEvent::new("a.b", "line\nbreak", &Header::default()))
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        fractal::publish::PublishErrorKind::InvalidEvent
    );
    assert!(error.to_string().contains("line break"), "{error}");
}

/// One definition of a hub's streams: a client that says otherwise than what the hub's owner
/// provisioned is stopped with both values, and the stream is left as it was.
#[tokio::test]
async fn a_client_whose_stream_settings_differ_from_the_hub_is_refused_and_changes_nothing() {
    let server = NatsServer::start();
    let mut owner = server.hub_config("alpha");
    owner.events.max_messages = 1000;
    owner.events.duplicate_window_secs = 60;
    let hub = fractal::Hub::connect(&owner).await.expect("connects");
    hub.provision().await.expect("provisions");
    hub.ensure_streams()
        .await
        .expect("the owner's own settings agree");

    let client = fractal::Hub::connect(&server.hub_config("alpha"))
        .await
        .expect("connects");
    let error = client.ensure_streams().await.unwrap_err();
    assert_eq!(error.kind(), fractal::hub::HubErrorKind::Mismatch);
    let message = error.to_string();
    for part in [
        "stream `EVENTS` exists with other settings",
        "max_messages is 1000 on the hub, -1 here",
        "duplicate_window_secs is 60 on the hub, 86400 here",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let info = events_config(&hub).await;
    assert_eq!(info.max_messages, 1000);

    // A service with such a configuration does not start; it says why.
    let mut config: fractal::service::ServiceConfig = fractal::config::from_toml(&format!(
        "subsystem = \"alpha\"\nservice = \"svc\"\nhub = {{ name = \"alpha\", urls = [\"{}\"] }}\nadmin = {{ listen = \"127.0.0.1:0\" }}\n",
        server.url()
    ))
    .expect("a service config");
    config.hub.connect_timeout_secs = 2;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let refused = fractal::service::Service::start(config, shutdown).await;
    let error = refused.expect_err("the service does not start").to_string();
    assert!(error.contains("max_messages is 1000 on the hub"), "{error}");
}

#[tokio::test]
async fn provisioning_is_idempotent_and_applies_new_limits() {
    let server = NatsServer::start();
    let mut config = server.hub_config("alpha");
    let hub = fractal::Hub::connect(&config).await.expect("connects");
    hub.provision().await.expect("first");
    hub.provision().await.expect("second");
    config.events.max_messages = 10;
    let hub = fractal::Hub::connect(&config).await.expect("connects");
    hub.provision().await.expect("updated");
    let info = events_config(&hub).await;
    assert_eq!(info.max_messages, 10);
    assert!(hub.is_connected());
}

/// The settings of the hub's event stream as the hub has them.
async fn events_config(hub: &fractal::Hub) -> async_nats::jetstream::stream::Config {
    hub.jetstream()
        .get_stream("EVENTS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone()
}

mod declared {
    use fractal::contract::{AnyContract, Contract, Internal};
    use fractal::proto::{Fault, Header};
    use fractal::service::{Declaration, Service, ServiceError, Subsystem};

    pub(super) const PLACED: Contract<Header> = Contract::external("order.placed");
    pub(super) const READY: Contract<Header> = Contract::external("order.ready");
    pub(super) const WRONG_MESSAGE: Contract<Fault> = Contract::external("order.placed");
    pub(super) const NOTED: Contract<Header, Internal> = Contract::internal("order.noted");
    pub(super) const PUBLISHES: &[AnyContract] = &[PLACED.any()];

    /// Publishes what it declares, then what it does not: the service stops with the error.
    async fn publisher(service: Service) -> Result<(), ServiceError> {
        let publisher = service.publisher();
        let header = Header::default();
        for declared in [PLACED.event("o-1", &header), NOTED.event("o-1", &header)] {
            publisher.publish(declared).await.expect("declared");
        }
        let wrong = publisher.publish(WRONG_MESSAGE.event("o-1", &Fault::default()));
        let undeclared = publisher.publish(READY.event("o-1", &header));
        let errors = [
            wrong.await.expect_err("another message"),
            undeclared.await.expect_err("another type"),
        ];
        Err(ServiceError::Other(
            errors.map(|e| e.to_string()).join("\n").into(),
        ))
    }

    /// Handles a contract it does not declare it consumes.
    async fn consumer(service: Service) -> Result<(), ServiceError> {
        let consumer = service
            .consumer()
            .on(READY, |_ready, _event| async { Ok(()) });
        service.run(consumer).await
    }

    /// Declares a contract it has no handler for.
    async fn forgetful(service: Service) -> Result<(), ServiceError> {
        let consumer = service
            .consumer()
            .on(NOTED, |_noted, _event| async { Ok(()) });
        service.run(consumer).await
    }

    pub(super) const SUBSYSTEM: Subsystem = Subsystem {
        program: "alpha",
        services: &[
            Declaration::service("publisher", |s| Box::pin(publisher(s))).publishes(PUBLISHES),
            Declaration::service("consumer", |s| Box::pin(consumer(s))),
            Declaration::service("forgetful", |s| Box::pin(forgetful(s))).consumes(&[PLACED.any()]),
        ],
    };
}

#[tokio::test]
async fn a_service_is_held_to_the_external_contracts_its_program_declares() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let run = |service: &str| {
        let config: fractal::service::ServiceConfig = fractal::config::from_toml(&format!(
            "subsystem = \"alpha\"\nservice = \"{service}\"\nhub = {{ name = \"alpha\", urls = [\"{}\"] }}\nadmin = {{ listen = \"127.0.0.1:0\" }}\n",
            server.url()
        ))
        .expect("a service config");
        async move {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let service = fractal::service::Service::start(config, shutdown)
                .await
                .expect("starts")
                .expect("not shut down");
            declared::SUBSYSTEM
                .run(service)
                .await
                .expect_err("stops")
                .to_string()
        }
    };

    // Declared external and internal events go out; another message or type does not.
    let error = run("publisher").await;
    assert!(
        error.contains(
            "`order.placed` carrying fractal.platform.v1.Fault is not among the external contracts alpha/publisher declares it publishes (external.order.placed (fractal.platform.v1.Header))"
        ),
        "{error}"
    );
    assert!(error.contains("`order.ready` carrying"), "{error}");
    let stored = stream_messages(&hub, "EVENTS").await;
    let subjects: Vec<&str> = stored.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "events.external.order.placed",
            "events.internal.order.noted"
        ]
    );

    let error = run("consumer").await;
    assert!(
        error.contains("it handles external.order.ready (fractal.platform.v1.Header), which is not among the external contracts it declares it consumes"),
        "{error}"
    );
    let error = run("forgetful").await;
    assert!(
        error.contains("it declares it consumes external.order.placed (fractal.platform.v1.Header) but has no handler for it"),
        "{error}"
    );
    // What `--describe` prints.
    let described = declared::SUBSYSTEM.described();
    assert_eq!(described[0].publishes[0].event_type, "order.placed");
    assert_eq!(
        described[2].consumes[0].message,
        "fractal.platform.v1.Header"
    );
}
