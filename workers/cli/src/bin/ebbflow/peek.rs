//! `ebbflow peek <queue>`: visible messages without receiving them.

use ebbflow::codec::ClaimRef;
use ebbflow::codec::Encoding;
use ebbflow::store::PeekedMessage;
use serde_json::json;

use crate::context::{block_on, encoding_arg, encoding_for, readable};
use crate::{CliError, Context};

/// Longest body shown on one line of the text output; `--json` shows all of it.
const SHOWN_CHARS: usize = 200;

/// Shows up to 32 visible messages from the front of a configured queue (or its poison queue)
/// without receiving them: their dequeue counts and visibility stay as they are. Bodies are
/// decoded with the queue's configured encoding.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A configured queue, or the poison queue of one (any other queue with --encoding).
    queue: String,
    /// How the queue's text is encoded, for a queue outside the config (a configured queue
    /// uses its own and must agree).
    #[arg(long, value_name = "ENCODING", value_parser = encoding_arg())]
    encoding: Option<Encoding>,
    /// How many messages, 1..=32 (the service's limit for one peek).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    count: u8,
    /// Print a JSON array (id, dequeue_count, inserted_at, text as stored, body decoded).
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Peeks and prints.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let settings = ctx.settings()?;
        let encoding = encoding_for(readable(&settings, &self.queue), &self.queue, self.encoding)?;
        let store = ctx.store(&settings)?;
        let queue = store.queue(&self.queue)?;
        let messages = block_on(queue.peek(self.count))??;
        if self.json {
            let list: Vec<_> = messages.iter().map(|m| as_json(m, encoding)).collect();
            let text = serde_json::to_string_pretty(&list).map_err(CliError::runtime)?;
            say!("{text}");
            return Ok(());
        }
        say!(
            "{} message(s) visible at the front of {} (peeked: not received, dequeue counts unchanged)",
            messages.len(),
            self.queue
        );
        for m in &messages {
            say!(
                "{}  inserted={}  dequeue_count={}  {}",
                m.id,
                inserted(m),
                m.dequeue_count,
                shown(&m.text, encoding)
            );
        }
        Ok(())
    }
}

fn inserted(m: &PeekedMessage) -> String {
    m.inserted_at
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into())
}

/// The body decoded for one line: its text (cut at [`SHOWN_CHARS`]), or what it is if not text.
fn shown(text: &str, encoding: Encoding) -> String {
    match ClaimRef::parse(text) {
        Ok(Some(r)) => {
            return format!(
                "claim-check reference: {} ({} bytes, {}; {} bytes of text)",
                r.location(),
                r.size,
                r.content_encoding,
                text.len()
            )
        }
        Err(e) => return format!("({e}; stored text: {})", cut(text)),
        Ok(None) => {}
    }
    let bytes = match encoding.decode(text) {
        Ok(bytes) => bytes,
        Err(e) => return format!("({e}; stored text: {})", cut(text)),
    };
    match String::from_utf8(bytes) {
        Ok(body) => format!("body={}", cut(&body)),
        Err(e) => format!("({} bytes, not UTF-8)", e.as_bytes().len()),
    }
}

fn cut(text: &str) -> String {
    // Control characters (line breaks included) escaped, so one message stays one line.
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    match escaped.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}... ({} bytes)", &escaped[..end], text.len()),
        None => escaped,
    }
}

fn as_json(m: &PeekedMessage, encoding: Encoding) -> serde_json::Value {
    let decoded = encoding.decode(&m.text);
    if let Ok(Some(r)) = ClaimRef::parse(&m.text) {
        return json!({
            "id": m.id,
            "dequeue_count": m.dequeue_count,
            "inserted_at": m.inserted_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "text": m.text,
            "claim": {
                "location": r.location(),
                "container": r.container,
                "blob": r.blob,
                "size": r.size,
                "sha256": r.sha256,
                "content_encoding": r.content_encoding,
            },
        });
    }
    json!({
        "id": m.id,
        "dequeue_count": m.dequeue_count,
        "inserted_at": m.inserted_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "text": m.text,
        "body": decoded.as_ref().ok().and_then(|b| std::str::from_utf8(b).ok()),
        "body_bytes": decoded.as_ref().ok().map(Vec::len),
    })
}
