//! The spans a message's way makes, after the OpenTelemetry messaging conventions. They are
//! built here, at the bottom, so every room can make them (the producer, the store's metering
//! layer, the listener, the bus); the exporter that gives them to OpenTelemetry is installed
//! from above (`observability::traces`) through [`install`].
//!
//! While nothing is installed (traces off, the default) each function costs one atomic load:
//! the `process` span is the plain `message` log span it always was, the others are
//! [`Span::none`].
//!
//! | span (`otel.name`) | kind | made by |
//! |---|---|---|
//! | `send <queue>` | producer | [`send_span`]: `Publisher` sends, `ebbflow enqueue`; a child of the caller's span |
//! | `receive <queue>` | client | [`receive_span`]: one per receive call of a dequeue task (a root) |
//! | `process <queue>` | consumer | [`process_span`]: one per message, around decode, handler and settle; a child of the producer's `send` when the message carries its trace context (envelope or claim-check reference), else a root |
//! | `process <queue>` (batch) | consumer | [`batch_span`]: one per batch handler call, a root with a link to each message's `process` span and `messaging.batch.message_count` |
//! | `process <event type>` | consumer | [`bus_process_span`]: one per bus event an observer handles; a child of the publisher's span when the event carries its trace context |
//! | `settle <queue>` | client | [`settle_span`]: delete, retry, release or poison of one message |
//! | `store.<op> <queue>` | client | every store call (the metering layer), under the span that made it |
//!
//! Attributes: `messaging.system` = [`SYSTEM`], `messaging.operation.type`,
//! `messaging.operation.name`, `messaging.destination.name` (the queue as configured),
//! `messaging.message.id`, `messaging.batch.message_count` (receive),
//! `messaging.azure.storage_queue.dequeue_count` (process).

use std::sync::OnceLock;

use tracing::Span;

use super::TraceContext;

/// The `messaging.system` value of ebbflow's spans: the OpenTelemetry conventions name none
/// for Azure Storage Queues (they have `servicebus` and `eventhubs`), so ebbflow uses this.
pub(crate) const SYSTEM: &str = "azure_storage_queue";

/// What an installed exporter does with spans, beyond what `tracing` carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exporter {
    /// Reads a span's trace context (for sending it along).
    pub context_of: fn(&Span) -> Option<TraceContext>,
    /// Makes a span continue a remote trace (before the span is first entered).
    pub set_parent: fn(&Span, &TraceContext),
    /// Sets one attribute on a span.
    pub set_attribute: fn(&Span, &'static str, Attr),
    /// Adds a link to another span's context (any time before the span closes).
    pub add_link: fn(&Span, &TraceContext),
    /// Gives a span the error status with this description.
    pub set_error: fn(&Span, String),
}

/// One span attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Installs the exporter's functions (once per process; a second call is ignored and returns
/// `false`). From then on the functions here make full spans.
pub(crate) fn install(exporter: Exporter) -> bool {
    EXPORTER.set(exporter).is_ok()
}

/// Whether this process exports traces: spans for the exporter are only worth creating then.
pub fn exporting() -> bool {
    EXPORTER.get().is_some()
}

/// The trace context of `span` for sending along (`None` when nothing exports traces, or the
/// span is not recorded).
pub(crate) fn context_of(span: &Span) -> Option<TraceContext> {
    EXPORTER.get().and_then(|e| (e.context_of)(span))
}

tokio::task_local! {
    /// The context of the span that made the store call in progress (see [`calling`]).
    static CALLER: Option<TraceContext>;
}

/// Runs one store call `call` remembering the context of the span that made it (the
/// producer's `send`, say), for layers below the call's own `store.<op>` span to read with
/// [`caller_context`]; while traces are off, `call` as it is.
pub(crate) async fn calling<F: std::future::Future>(call: F) -> F::Output {
    match context_of(&Span::current()) {
        Some(cx) => CALLER.scope(Some(cx), call).await,
        None => call.await,
    }
}

/// The context of the span that made the store call in progress, when traces are exported
/// and the call runs inside [`calling`]: what the claim check writes into a reference, so the
/// consumer's `process` is a child of the producer's `send` (not of its `store.send`).
pub(crate) fn caller_context() -> Option<TraceContext> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// `text` with `span`'s trace context in front (the envelope of [`TraceContext::wrap`]); `text`
/// unchanged when the span has no context (traces off).
pub fn inject(span: &Span, text: String) -> String {
    match context_of(span) {
        Some(cx) => cx.wrap(&text),
        None => text,
    }
}

fn set(span: &Span, attributes: &[(&'static str, Attr)]) {
    if let Some(e) = EXPORTER.get() {
        for (key, value) in attributes {
            (e.set_attribute)(span, key, value.clone());
        }
    }
}

fn common(operation: &'static str, queue: &str) -> [(&'static str, Attr); 3] {
    [
        ("messaging.system", Attr::Text(SYSTEM.into())),
        ("messaging.operation.type", Attr::Text(operation.into())),
        ("messaging.destination.name", Attr::Text(queue.into())),
    ]
}

/// A producer's `send <queue>` span, a child of the caller's span; [`Span::none`] while
/// nothing exports traces. Run the store's send inside it, put its context in the message with
/// [`inject`], and record the new id with `span.record("messaging.message.id", id)`.
pub fn send_span(queue: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format!("send {queue}"),
        otel.kind = "producer",
        "messaging.message.id" = tracing::field::Empty,
    );
    set(&span, &common("send", queue));
    span
}

/// The span of one message's run: `process <queue>` while traces are exported, else the plain
/// `message` log span (`message_id`, `dequeue_count`; the listener's span around it names the
/// queue). A well-formed trace-context envelope is taken off `text` whatever the queue's
/// `trace_context` says (that option controls sending only), so a consumer never hands a
/// handler the envelope of a producer that had the option on; the span then continues the
/// producer's trace. Text without one (or with a malformed one) is left as it is. Without an
/// envelope, a claim-check reference's own `trace` (see [`ClaimRef`](crate::codec::ClaimRef))
/// is continued instead.
pub fn process_span(queue: &str, message_id: &str, dequeue_count: u32, text: &mut String) -> Span {
    let parent = {
        let (cx, body) = TraceContext::unwrap(text);
        let cut = text.len() - body.len();
        if cx.is_some() {
            text.drain(..cut);
        }
        cx
    };
    if !exporting() {
        // A child of the listener's span, which names the queue.
        return tracing::info_span!("message", message_id = %message_id,
                                   dequeue_count = dequeue_count);
    }
    let span = tracing::info_span!(
        "message",
        message_id = %message_id,
        dequeue_count = dequeue_count,
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
    );
    set(&span, &common("process", queue));
    set(
        &span,
        &[
            ("messaging.message.id", Attr::Text(message_id.into())),
            (
                "messaging.azure.storage_queue.dequeue_count",
                Attr::Int(i64::from(dequeue_count)),
            ),
        ],
    );
    // A claim-check reference may carry the producer's context in itself (any queue).
    let parent = parent.or_else(|| {
        let (_, body) = TraceContext::unwrap(text);
        super::claim::ClaimRef::parse(body)
            .ok()
            .flatten()
            .and_then(|r| r.trace)
    });
    if let (Some(cx), Some(e)) = (parent, EXPORTER.get()) {
        (e.set_parent)(&span, &cx);
    }
    span
}

/// The span of one receive call (`receive <queue>`, a root), or [`Span::none`] while traces are
/// off. Record the batch's size with [`received`].
pub fn receive_span(queue: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(parent: None, "receive", otel.name = %format!("receive {queue}"),
                                   otel.kind = "client");
    set(&span, &common("receive", queue));
    span
}

/// Records how many messages a receive returned on its span.
pub fn received(span: &Span, count: usize) {
    if !span.is_none() {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        set(span, &[("messaging.batch.message_count", Attr::Int(count))]);
    }
}

/// The span of settling one message (`settle <queue>`; `action`: delete, retry, release or
/// poison), or [`Span::none`] while traces are off.
pub fn settle_span(queue: &str, message_id: &str, action: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!("settle", otel.name = %format!("settle {queue}"),
                                   otel.kind = "client");
    set(&span, &common("settle", queue));
    set(
        &span,
        &[
            ("messaging.message.id", Attr::Text(message_id.into())),
            ("messaging.operation.name", Attr::Text(action.into())),
        ],
    );
    span
}

/// Marks `span` as failed after the conventions: the error status with `description`, and
/// `error.type` = `error_type` (what happened to the message: `retry`, or the poison reason
/// such as `max_dequeue_count_exceeded`). Nothing while traces are off.
pub(crate) fn failed(span: &Span, error_type: &str, description: &str) {
    if let Some(e) = EXPORTER.get() {
        if !span.is_none() {
            (e.set_attribute)(span, "error.type", Attr::Text(error_type.into()));
            (e.set_error)(span, description.into());
        }
    }
}

/// The span of one batch handler call (`process <queue>`, a root, after the conventions'
/// batch processing: links, not parents), linked to each message's own `process` span in
/// `messages` (each the child of its producer's `send` when the message carried a context),
/// with `messaging.batch.message_count`; [`Span::none`] while traces are off. The handler's own
/// spans nest under it.
pub(crate) fn batch_span(queue: &str, messages: &[Span]) -> Span {
    let Some(e) = EXPORTER.get() else {
        return Span::none();
    };
    let span = tracing::info_span!(parent: None, "batch", otel.name = %format!("process {queue}"),
                                   otel.kind = "consumer");
    set(&span, &common("process", queue));
    let count = i64::try_from(messages.len()).unwrap_or(i64::MAX);
    set(
        &span,
        &[("messaging.batch.message_count", Attr::Int(count))],
    );
    for message in messages {
        if let Some(cx) = (e.context_of)(message) {
            (e.add_link)(&span, &cx);
        }
    }
    span
}

/// The `messaging.system` of bus events' spans (ebbflow's own bus, in-process or on Redis).
pub(crate) const BUS_SYSTEM: &str = "ebbflow_bus";

/// The span of one bus event an observer handles (`process <event type>`, consumer), a child of
/// the publisher's span when the event carried its trace context (`parent`), else a root;
/// [`Span::none`] while traces are off. The observer's own spans nest under it.
pub(crate) fn bus_process_span(kind: &str, event_id: &str, parent: Option<&TraceContext>) -> Span {
    let Some(e) = EXPORTER.get() else {
        return Span::none();
    };
    let span = tracing::info_span!(parent: None, "bus_event", otel.name = %format!("process {kind}"),
                                   otel.kind = "consumer");
    set(
        &span,
        &[
            ("messaging.system", Attr::Text(BUS_SYSTEM.into())),
            ("messaging.operation.type", Attr::Text("process".into())),
            ("messaging.destination.name", Attr::Text(kind.into())),
            ("messaging.message.id", Attr::Text(event_id.into())),
        ],
    );
    if let Some(cx) = parent {
        (e.set_parent)(&span, cx);
    }
    span
}

/// The client span of one store call (`store.<op> <queue>`), or [`Span::none`] while traces
/// are off.
pub(crate) fn store_span(queue: &str, operation: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!("store", otel.name = %format!("store.{operation} {queue}"),
                        otel.kind = "client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_spans_cost_nothing_and_the_envelope_still_comes_off() {
        // No test in this binary installs an exporter.
        assert!(!exporting());
        assert!(send_span("orders").is_none());
        assert!(receive_span("orders").is_none());
        assert!(settle_span("orders", "m1", "delete").is_none());
        assert!(store_span("orders", "send").is_none());
        let cx = TraceContext::new([1; 16], [2; 8], true, "");
        let mut text = cx.wrap("eyJhIjoxfQ==");
        let _span = process_span("orders", "m1", 1, &mut text);
        assert_eq!(text, "eyJhIjoxfQ==");
        // Text without a well-formed envelope is the handler's as it is.
        for plain in [
            "x",
            "traceparent: nonsense\n\nx",
            "traceparent: 00-1-2-01\nx",
        ] {
            let mut text = plain.to_string();
            let _span = process_span("orders", "m1", 1, &mut text);
            assert_eq!(text, plain);
        }
        assert_eq!(inject(&Span::none(), "x".into()), "x");
    }
}
