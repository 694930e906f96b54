//! `fractal faults`: a hub's fault events, one or all, and the resubmission of their originals
//! to the consumer that could not process them.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use fractal::proto::{Envelope, Fault, FaultKind};
use fractal::{Hub, wire};
use futures::StreamExt as _;
use prost::Message as _;

use crate::events::payload_json;
use fractal_bridge::Contracts;

/// Every fault stored on `hub`, oldest first.
pub(crate) async fn all(hub: &Hub) -> anyhow::Result<Vec<Fault>> {
    let mut stream = hub
        .jetstream()
        .get_stream(hub.faults_stream())
        .await
        .with_context(|| format!("hub `{}` has no fault stream", hub.name()))?;
    let count = stream.info().await?.state.messages as usize;
    let mut faults = Vec::with_capacity(count);
    if count == 0 {
        return Ok(faults);
    }
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    for read in 0..count {
        let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await
        else {
            bail!("the fault stream stopped after {read} of {count} messages");
        };
        let message = message?;
        match Fault::decode(message.payload.clone()) {
            Ok(fault) => faults.push(fault),
            Err(e) => eprintln!(
                "Skipping an undecodable message on {}: {e}",
                message.subject
            ),
        }
    }
    Ok(faults)
}

fn kind(fault: &Fault) -> &'static str {
    match fault.kind() {
        FaultKind::Unspecified => "unspecified",
        FaultKind::RetriesExhausted => "retries-exhausted",
        FaultKind::Permanent => "permanent",
        FaultKind::Malformed => "malformed",
        FaultKind::ContractViolation => "contract-violation",
        FaultKind::Unhandled => "unhandled",
    }
}

fn original_type(fault: &Fault) -> String {
    fault
        .original
        .as_ref()
        .and_then(|o| o.headers.iter().find(|h| h.name == wire::TYPE))
        .map(|h| h.value.clone())
        .unwrap_or_else(|| "?".into())
}

/// One line per fault.
pub(crate) fn list(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "No faults.\n".into();
    }
    let mut out = String::new();
    for fault in faults {
        let mut reason = fault.reason.replace('\n', " ");
        if reason.chars().count() > 100 {
            reason = reason.chars().take(97).collect::<String>() + "...";
        }
        out.push_str(&format!(
            "{}  {:<20}  {:<18}  {:<24}  {reason}\n",
            fault.id,
            fault.consumer,
            kind(fault),
            original_type(fault)
        ));
    }
    out
}

/// Everything about one fault, the original's payload as JSON.
pub(crate) fn show(contracts: &Contracts, fault: &Fault) -> String {
    let mut out = format!(
        "fault       {}\nservice     {}\nconsumer    {}\nkind        {}\ndeliveries  {}\nreason      {}\n",
        fault.id,
        fault.service,
        fault.consumer,
        kind(fault),
        fault.deliveries,
        fault.reason
    );
    if let Some(original) = &fault.original {
        out.push_str(&format!(
            "original    {} #{} on {}\n",
            original.stream, original.stream_sequence, original.subject
        ));
        for header in &original.headers {
            out.push_str(&format!("  {}: {}\n", header.name, header.value));
        }
        match Envelope::decode(original.body.as_ref()) {
            Ok(envelope) => out.push_str(&format!(
                "payload     {} {}\n",
                envelope.payload_type,
                payload_json(contracts, &envelope.payload_type, &envelope.payload)
            )),
            Err(e) => out.push_str(&format!(
                "body        {} bytes, not an envelope: {e}\n",
                original.body.len()
            )),
        }
    }
    out
}

/// Publishes the original of `fault` again, for its consumer alone, with the resubmission's
/// own message id (so resubmitting twice stores it once). Returns whether the hub stored it
/// (false: already resubmitted).
pub(crate) async fn resubmit(hub: &Hub, fault: &Fault) -> anyhow::Result<bool> {
    let Some(original) = &fault.original else {
        bail!("fault {} keeps no original message", fault.id);
    };
    if fault.consumer.is_empty() {
        bail!("fault {} names no consumer to resubmit to", fault.id);
    }
    let mut headers = fractal::fault::header_map(&original.headers)
        .map_err(|e| anyhow::anyhow!("fault {} cannot be resubmitted: {e}", fault.id))?;
    headers.insert(wire::MSG_ID, wire::resubmit_id(&fault.id).as_str());
    headers.insert(wire::RESUBMIT_FOR, fault.consumer.as_str());
    let ack = hub
        .jetstream()
        .publish_with_headers(
            original.subject.clone(),
            headers,
            original.body.clone().into(),
        )
        .await
        .context("cannot publish")?
        .await
        .context("the hub did not store it")?;
    Ok(!ack.duplicate)
}
