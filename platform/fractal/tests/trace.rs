//! The trace context travels in the headers: a consumer's process span continues the trace of
//! the publish that produced the event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fractal::proto::Header;
use fractal::{Consumer, ConsumerConfig, NewEvent, Publisher};
use fractal_testkit::{NatsServer, eventually};
use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

fn current_trace_id() -> TraceId {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_continues_the_publishers_trace() {
    // Spans get real ids; nothing is exported.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let publisher = Publisher::new(&hub, "alpha/checkout");
    let published_in = async {
        publisher
            .publish(NewEvent::new("order.placed", "o-1", &Header::default()))
            .await
            .expect("published");
        current_trace_id()
    }
    .instrument(tracing::info_span!("checkout"))
    .await;
    assert_ne!(published_in, TraceId::INVALID);

    let seen: Arc<Mutex<Option<TraceId>>> = Arc::default();
    let token = CancellationToken::new();
    let consumer =
        Consumer::new(&hub, "kitchen", ConsumerConfig::default()).on_any("order.placed", {
            let seen = seen.clone();
            move |_event| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap() = Some(current_trace_id());
                    Ok(())
                }
            }
        });
    let run = tokio::spawn(consumer.run(token.clone()));
    let handled_in = eventually(Duration::from_secs(10), "the event handled", || async {
        *seen.lock().unwrap()
    })
    .await;
    token.cancel();
    run.await.expect("joined").expect("ran");
    assert_eq!(handled_in, published_in);
}
