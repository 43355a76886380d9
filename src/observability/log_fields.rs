//! The text log format's field formatter: like `tracing-subscriber`'s default (the message as
//! written, then `name=value` pairs separated by spaces), except that every control character
//! in a message or a value is written escaped (`\n`, `\r`, `\t`, `\u{1b}`, as are U+2028 and
//! U+2029, which some viewers take for line ends).
//!
//! Why: many fields come from the network (a bus envelope's `from`, `kind` or error, a handler
//! error quoting a message, a store's answer). Written raw, a value holding `\n` starts a line
//! that looks like ebbflow's own (`2026-01-01T00:00:00Z  INFO ebbflow: ...`), and an escape
//! sequence reaches the operator's terminal. The JSON format escapes them already.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Formats the fields of events and spans for the text format, control characters escaped, so
/// one event is always one line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            seen: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    seen: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // The `log` crate's records carry their origin as fields the event line shows already.
        if name.starts_with("log.") {
            return;
        }
        let pad = if std::mem::replace(&mut self.seen, true) {
            " "
        } else {
            ""
        };
        self.result = if name == "message" {
            write!(self.writer, "{pad}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{pad}{name}=")
        }
        .and_then(|()| Escaping(&mut self.writer).write_fmt(value));
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default format: a message as written, another string quoted.
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.write(field, format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Writes through to `.0`, escaping control characters (C0, DEL, C1) and the Unicode line and
/// paragraph separators.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if !(c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
                continue;
            }
            self.0.write_str(&s[plain..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

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

    /// What the text format writes for one event with fields from the network, in a span.
    fn logged(fields: impl for<'w> FormatFields<'w> + Send + Sync + 'static) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged = "x\n2026-01-01T00:00:00.000000Z  INFO ebbflow: forged";
            let span = tracing::info_span!("listener", queue = %forged);
            let _entered = span.enter();
            let error = std::io::Error::other("bad\r\nERROR forged");
            tracing::warn!(
                from = %forged,
                kind = forged,
                error = &error as &(dyn std::error::Error + 'static),
                debug = ?forged,
                "event from {}\u{1b}[31m red \u{2028} done",
                forged
            );
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_field_from_the_network_cannot_start_a_line_or_reach_the_terminal() {
        let text = logged(EscapedFields);
        assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(!text.contains('\u{2028}'), "{text}");
        assert!(
            text.contains("event from x\\n2026-01-01T00:00:00.000000Z  INFO ebbflow: forged\\u{1b}[31m red \\u{2028} done"),
            "{text}"
        );
        assert!(text.contains("from=x\\n2026"), "{text}");
        assert!(text.contains("kind=\"x\\n2026"), "{text}");
        assert!(text.contains("error=bad\\r\\nERROR forged"), "{text}");
        assert!(text.contains("listener{queue=x\\n2026"), "{text}");
        // The default formatter writes such values raw: the reason for this one.
        let raw = logged(tracing_subscriber::fmt::format::DefaultFields::new());
        assert!(raw.lines().count() > 1, "{raw}");
    }
}
