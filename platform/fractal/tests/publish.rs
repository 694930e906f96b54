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
    let info = hub
        .jetstream()
        .get_stream("EVENTS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    assert_eq!(info.max_messages, 10);
    assert!(hub.is_connected());
}
