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
