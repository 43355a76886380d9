//! Each field once per log line: an event field that a span around it already carries (the
//! `message_id` of the message span, a listener's `queue`) is left out of the event's own
//! fields, in text and in JSON. The span shows it, before the event's text in the text
//! format and under `spans` in JSON, so nothing is lost, and a handler that logs
//! `message_id = %ctx.message_id()` repeats nothing either.
//!
//! The standard formatters write every field an event carries, so this wraps one: when some
//! field is already carried, the event is rebuilt without it (its other values copied, in
//! their order and with their types) and handed to the wrapped formatter.

use std::fmt;

use tracing::field::{display, DisplayValue, Field, Value, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The text format: the standard full line (time, level, spans, target, fields).
pub(crate) fn text() -> Unrepeated<Format> {
    Unrepeated(Format::default())
}

/// The JSON format: one object a line with `timestamp`, `level`, `target`, `fields` and the
/// spans around the event under `spans`, outermost first (the innermost is not repeated
/// under a `span` key of its own).
pub(crate) fn json() -> Unrepeated<Format<Json>> {
    Unrepeated(
        tracing_subscriber::fmt::format()
            .json()
            .with_current_span(false)
            .with_span_list(true),
    )
}

/// The most fields a rebuilt event can hold (tracing's own limit for one callsite).
const MAX_FIELDS: usize = 32;

/// A [`FormatEvent`] that writes each field once per line (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Unrepeated<F>(pub(crate) F);

impl<S, N, F> FormatEvent<S, N> for Unrepeated<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let target = event.metadata().target();
        if super::logging::SDK_TARGETS
            .iter()
            .any(|sdk| target.starts_with(sdk))
        {
            // The Azure SDK's own lines: formatted without colours, then redacted whole.
            let mut line = String::new();
            self.unrepeated(ctx, Writer::new(&mut line), event)?;
            let mut writer = writer;
            return writer.write_str(&crate::secret::redact(&line));
        }
        self.unrepeated(ctx, writer, event)
    }
}

impl<F> Unrepeated<F> {
    fn unrepeated<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        let carried = carried_by_spans(ctx, event);
        if carried.is_empty() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut kept = Kept {
            carried: &carried,
            values: Vec::new(),
            dropped: false,
        };
        event.record(&mut kept);
        let Some(first) = kept.values.first().map(|(f, _)| f.clone()) else {
            // Every field is carried by a span: nothing of its own to write but the line.
            return self.0.format_event(ctx, writer, event);
        };
        if !kept.dropped || kept.values.len() > MAX_FIELDS {
            return self.0.format_event(ctx, writer, event);
        }
        let mut slots: [(&Field, Option<&dyn Value>); MAX_FIELDS] = [(&first, None); MAX_FIELDS];
        for (slot, (field, value)) in slots.iter_mut().zip(&kept.values) {
            *slot = (field, Some(value.as_value()));
        }
        let metadata = event.metadata();
        let fields = metadata.fields().value_set(&slots);
        let rebuilt = if event.is_contextual() {
            Event::new(metadata, &fields)
        } else {
            Event::new_child_of(event.parent().cloned(), metadata, &fields)
        };
        self.0.format_event(ctx, writer, &rebuilt)
    }
}

/// The names of the event's fields that a span around it has recorded (as this layer
/// formatted them: `name=` in text, `"name":` in JSON).
fn carried_by_spans<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Vec<&'static str>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let names: Vec<&'static str> = event
        .fields()
        .map(|f| f.name())
        .filter(|n| *n != "message")
        .collect();
    let mut carried = Vec::new();
    let Some(scope) = ctx.event_scope() else {
        return carried;
    };
    for span in scope {
        let extensions = span.extensions();
        let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
            continue;
        };
        for name in &names {
            if !carried.contains(name) && recorded(&formatted.fields, name) {
                carried.push(*name);
            }
        }
    }
    carried
}

/// Whether a span's formatted fields hold `name`: `name=` at the start or after a space
/// (text, its colours taken off), or `"name":` (JSON).
fn recorded(formatted: &str, name: &str) -> bool {
    let formatted = plain(formatted);
    formatted
        .strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('='))
        || formatted.contains(&format!(" {name}="))
        || formatted.contains(&format!("\"{name}\":"))
}

/// `text` without its ANSI colour sequences (`ESC [ ... letter`).
fn plain(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\x1b') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A copied field value, with its type (a number stays a number in JSON).
enum Owned {
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Bool(bool),
    Str(String),
    /// A `Debug` or `Display` value (the event's text among them), as it was written.
    Text(DisplayValue<String>),
}

impl Owned {
    fn as_value(&self) -> &dyn Value {
        match self {
            Owned::I64(v) => v,
            Owned::U64(v) => v,
            Owned::I128(v) => v,
            Owned::U128(v) => v,
            Owned::F64(v) => v,
            Owned::Bool(v) => v,
            Owned::Str(v) => v,
            Owned::Text(v) => v,
        }
    }
}

/// Copies the fields no span carries.
struct Kept<'a> {
    carried: &'a [&'static str],
    values: Vec<(Field, Owned)>,
    dropped: bool,
}

impl Kept<'_> {
    fn keep(&mut self, field: &Field, value: Owned) {
        if self.carried.contains(&field.name()) {
            self.dropped = true;
        } else {
            self.values.push((field.clone(), value));
        }
    }
}

impl Visit for Kept<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.keep(field, Owned::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.keep(field, Owned::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.keep(field, Owned::U64(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.keep(field, Owned::I128(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.keep(field, Owned::U128(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.keep(field, Owned::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, Owned::Str(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.keep(field, Owned::Text(display(value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.keep(field, Owned::Text(display(format!("{value:?}"))));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// How often field `name` appears in a text or JSON line.
    fn times(line: &str, name: &str) -> usize {
        let text = line
            .match_indices(&format!("{name}="))
            .filter(|(at, _)| *at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b'{'))
            .count();
        text + line.matches(&format!("\"{name}\":")).count()
    }

    /// The runtime's spans around a message's run, and events inside them that name the
    /// message and the queue again (as the listener's and a handler's lines do).
    fn log_a_message_run() {
        let listener = tracing::info_span!("listener", queue = "orders");
        let _l = listener.enter();
        let task = tracing::info_span!("dequeue", task = 1);
        let _t = task.enter();
        let message = tracing::info_span!("message", message_id = "m-1", dequeue_count = 2);
        let _m = message.enter();
        tracing::warn!(
            queue = "orders",
            message_id = "m-1",
            error = "boom",
            "handler failed"
        );
        tracing::info!(message_id = "m-1", order = 7_u64, "order handled");
        // Another message's id is not this span's: a different field name, kept.
        tracing::info!(
            new_id = "m-2",
            "message released on its last try as a fresh copy"
        );
    }

    /// The line formats a run is written in.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Form {
        /// Text with the default field formatter.
        Plain,
        /// The same, coloured.
        Coloured,
        /// Text with the runtime's own field formatter (control characters escaped).
        Escaped,
        Json,
    }

    fn run(form: Form) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(form == Form::Coloured);
        match form {
            Form::Json => {
                let subscriber = builder.json().event_format(super::json()).finish();
                tracing::subscriber::with_default(subscriber, log_a_message_run);
            }
            Form::Escaped => {
                let subscriber = builder
                    .fmt_fields(crate::observability::log_fields::EscapedFields)
                    .event_format(super::text())
                    .finish();
                tracing::subscriber::with_default(subscriber, log_a_message_run);
            }
            Form::Plain | Form::Coloured => {
                let subscriber = builder.event_format(super::text()).finish();
                tracing::subscriber::with_default(subscriber, log_a_message_run);
            }
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        text
    }

    #[test]
    fn a_field_a_span_carries_is_written_once_per_line() {
        for form in [Form::Plain, Form::Coloured, Form::Escaped, Form::Json] {
            let text = run(form);
            let plain = super::plain(&text).into_owned();
            for line in plain.lines() {
                assert_eq!(times(line, "message_id"), 1, "{form:?}: {line}");
                assert_eq!(times(line, "queue"), 1, "{form:?}: {line}");
            }
            // Nothing else is lost: the event's own fields, its text, its level.
            assert!(
                plain.contains("boom") && plain.contains("handler failed"),
                "{plain}"
            );
            assert!(plain.contains("WARN"), "{plain}");
            assert_eq!(times(&plain, "order"), 1, "{plain}");
            assert_eq!(times(&plain, "new_id"), 1, "{plain}");
        }
        // JSON keeps types and the span list, outermost first.
        let line: serde_json::Value =
            serde_json::from_str(run(Form::Json).lines().nth(1).unwrap()).unwrap();
        assert_eq!(line["fields"]["order"], 7, "{line}");
        assert_eq!(line["fields"]["message"], "order handled", "{line}");
        assert_eq!(line["spans"][0]["queue"], "orders", "{line}");
        assert_eq!(line["spans"][2]["message_id"], "m-1", "{line}");
        assert!(line.get("span").is_none(), "{line}");
    }
}
