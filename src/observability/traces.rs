//! OpenTelemetry traces: the spans a message's way makes, following the OpenTelemetry
//! messaging conventions, and (with the `otel` cargo feature, on by default) their export over
//! OTLP (HTTP protobuf or JSON; gRPC with the `otel-grpc` feature).
//!
//! Off unless configured: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! in the environment, or `[observability.traces] endpoint`, turns it on in any worker. While
//! it is off the spans below are the plain log spans they always were (or none at all), and
//! no exporter, layer or thread exists: one atomic load per span site.
//!
//! | span (`otel.name`) | kind | where |
//! |---|---|---|
//! | `send <queue>` | producer | [`crate::Publisher`] sends ([`send_span`]), child of the caller's span |
//! | `receive <queue>` | client | one per receive call of a dequeue task (a root) |
//! | `process <queue>` | consumer | one per message, around decode, handler and settle; a child of the producer's `send` when the message carries its trace context, else a root |
//! | `settle <queue>` | client | delete, retry, release or poison of one message |
//! | `<op> <queue>` | client | every store call (the metering layer), under the span that made it |
//!
//! Attributes: `messaging.system` = [`SYSTEM`], `messaging.operation.type`,
//! `messaging.operation.name`, `messaging.destination.name` (the queue as configured, before
//! sharding), `messaging.message.id`, `messaging.batch.message_count` (receives),
//! `messaging.azure.storage_queue.dequeue_count` (process). Handlers' own `tracing` spans and
//! events nest under `process`.

use tracing::Span;

use crate::codec::trace::exporting;
use crate::codec::TraceContext;
use crate::store::ReceivedMessage;

pub use crate::codec::trace::{send_span, SYSTEM};
pub use crate::config::{TracesProtocol as Protocol, TracesSettings};

/// The span of one message's run: `process <queue>` with the message's attributes when traces
/// are exported, else the plain `message` log span (`queue`, `message_id`, `dequeue_count`).
/// With `envelope` (the queue's `trace_context`), a trace-context envelope is taken off the
/// message's text and the span continues the producer's trace. The listener runs the
/// message's whole dispatch inside it.
pub fn process_span(queue: &str, message: &mut ReceivedMessage, envelope: bool) -> Span {
    let parent = if envelope {
        let (cx, body) = TraceContext::unwrap(&message.text);
        let cx = cx.map(|cx| (cx, body.len()));
        if let Some((_, len)) = &cx {
            let start = message.text.len() - len;
            message.text.drain(..start);
        }
        cx.map(|(cx, _)| cx)
    } else {
        None
    };
    if !exporting() {
        return tracing::info_span!("message", queue = %queue, message_id = %message.id,
                                   dequeue_count = message.dequeue_count);
    }
    let span = tracing::info_span!(
        "message",
        queue = %queue,
        message_id = %message.id,
        dequeue_count = message.dequeue_count,
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
    );
    otel::attributes(
        &span,
        "process",
        queue,
        &[
            ("messaging.message.id", message.id.clone().into()),
            (
                "messaging.azure.storage_queue.dequeue_count",
                i64::from(message.dequeue_count).into(),
            ),
        ],
    );
    if let Some(cx) = parent {
        otel::set_parent(&span, &cx);
    }
    span
}

/// The span of one receive call (`receive <queue>`), or none while traces are off. Record the
/// batch's size with [`received`].
pub fn receive_span(queue: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(parent: None, "receive", otel.name = %format!("receive {queue}"),
                                   otel.kind = "client");
    otel::attributes(&span, "receive", queue, &[]);
    span
}

/// Records how many messages a receive returned on its span.
pub fn received(span: &Span, count: usize) {
    if exporting() && !span.is_none() {
        otel::attributes(
            span,
            "receive",
            "",
            &[("messaging.batch.message_count", (count as i64).into())],
        );
    }
}

/// The span of settling one message (`settle <queue>`: delete, retry, release, poison), or
/// none while traces are off.
pub fn settle_span(queue: &str, message_id: &str, action: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!("settle", otel.name = %format!("settle {queue}"),
                                   otel.kind = "client");
    otel::attributes(
        &span,
        "settle",
        queue,
        &[
            ("messaging.message.id", message_id.to_string().into()),
            ("messaging.operation.name", action.into()),
        ],
    );
    span
}

#[cfg(feature = "otel")]
mod otel {
    pub(super) use super::export::{attributes, set_parent};
}

#[cfg(not(feature = "otel"))]
mod otel {
    use super::{Attr, TraceContext};
    use tracing::Span;

    pub(super) fn attributes(_: &Span, _: &str, _: &str, _: &[(&'static str, Attr)]) {}
    pub(super) fn set_parent(_: &Span, _: &TraceContext) {}
}

/// One span attribute's value.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
#[derive(Debug, Clone)]
enum Attr {
    Text(String),
    Int(i64),
}

impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::Text(s)
    }
}

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr::Text(s.to_string())
    }
}

impl From<i64> for Attr {
    fn from(n: i64) -> Self {
        Attr::Int(n)
    }
}

#[cfg(feature = "otel")]
#[path = "traces_export.rs"]
mod export;

#[cfg(feature = "otel")]
pub use export::{flush, install, InstallError};

/// Without the `otel` feature there is nothing to flush.
#[cfg(not(feature = "otel"))]
pub fn flush() {}
