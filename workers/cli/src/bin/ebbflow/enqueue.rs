//! `ebbflow enqueue <queue>`: send test messages in the queue's encoding, then the push
//! trigger the config declares.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::{ClaimRef, Encoding, TraceContext};
use ebbflow::store::{
    Layered, LayeredStore, Queue, QueueLayer, SentMessage, StoreError, StoreLayer,
};
use ebbflow::store::{SendOptions, TimeToLive, MAX_MESSAGE_BYTES, MAX_VISIBILITY};
use ebbflow::store::{DEFAULT_TIME_TO_LIVE as DEFAULT_TTL, MAX_TIME_TO_LIVE as MAX_TTL};

use crate::context::{block_on, configured, encoding_arg, encoding_for, parse_duration};
use crate::progress::Progress;
use crate::push::{self, WorkDetected};
use crate::{CliError, Context};

/// Sends in flight at once for `--count`.
const SENDERS: u32 = 16;

/// Sends a message (the text exactly as given: JSON or plain) to a configured queue, written
/// in that queue's configured encoding (base64 or none), then sends the push trigger the
/// config declares (today: a POST to the HTTP trigger endpoint when [triggers.http] is
/// enabled, with its token), so an idle worker wakes at once. Prints the new message ids and
/// whether a trigger went out. Exit 1 when a send or the trigger failed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A configured queue (a [queues.<name>] section), or any queue with --encoding.
    queue: String,
    /// The message text (JSON or plain). Give this or --file.
    #[arg(conflicts_with = "file")]
    text: Option<String>,
    /// Read the message from FILE ("-": standard input). Any bytes on a base64 queue; UTF-8
    /// text on a queue with encoding "none". Over 64 KiB of text, a configured queue's payload
    /// goes through the claim check (to a blob, up to storage.claim_check.max_payload_bytes)
    /// when a blob endpoint is known; without one it is refused.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send this many copies, 1..=10000. A progress line on stderr says how far it got,
    /// every second, when stderr is a terminal and N is 100 or more (or with --progress).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Write the progress line of a --count send even when stderr is not a terminal (one line
    /// a second, for a CI log).
    #[arg(long)]
    progress: bool,
    /// Time to live: the message expires this long after it is sent, 1s..=68y
    /// (default: the service's 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Initial invisibility: workers see the message after this long, 0s..=7d, shorter than
    /// the time to live (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    delay: Duration,
    /// How to encode the text, for a queue outside the config (a quick trial; a configured
    /// queue uses its own encoding, and --encoding must agree with it).
    #[arg(long, value_name = "ENCODING", value_parser = encoding_arg())]
    encoding: Option<Encoding>,
    /// Create the queue first if it does not exist (a worker creates its queues at start-up
    /// while storage.create_queues is true), and the claim check's blob container.
    #[arg(long)]
    create: bool,
    /// Send no push trigger.
    #[arg(long, conflicts_with = "trigger_url")]
    no_trigger: bool,
    /// Post the trigger to this endpoint (another replica's `http://host:port`, `/trigger`
    /// appended when no path is given) instead of the configured one; sends the configured
    /// token.
    #[arg(long, value_name = "URL")]
    trigger_url: Option<String>,
}

impl Args {
    /// Checks everything that can be checked locally, then sends and triggers.
    pub fn run(self, ctx: &Context) -> Result<(), CliError> {
        let options = self.send_options()?;
        if let Some(url) = &self.trigger_url {
            push::check_url(url).map_err(CliError::usage)?;
        }
        // The payload's source is checked before the config is read: a usage error names the
        // argument whatever the config says.
        match (&self.text, &self.file) {
            (None, None) => {
                return Err(CliError::usage(
                    "give the message text or --file FILE (see ebbflow enqueue --help)",
                ))
            }
            (None, Some(path)) if path.as_os_str() != "-" => {
                std::fs::metadata(path)
                    .map_err(|e| CliError::usage(format!("--file {}: {e}", path.display())))?;
            }
            _ => {}
        }
        let settings = ctx.settings()?;
        let queue_settings = configured(&settings, &self.queue);
        let trace_context = queue_settings.as_ref().is_ok_and(|q| q.trace_context);
        let known = queue_settings.is_ok();
        let encoding = encoding_for(
            queue_settings.map(|q| q.encoding),
            &self.queue,
            self.encoding,
        )?;
        // With the claim check on, a payload up to its limit goes (to a blob when large); the
        // claim check knows only the configured queues' formats.
        let blobs = ctx.blobs(&settings)?;
        let how = if blobs.is_some() && !known {
            "the claim check sends only to configured queues: add a [queues.<name>] section for \
             this queue"
        } else {
            settings.storage.claim_check.how_to_enable()
        };
        let container = blobs.filter(|_| known);
        let claim_on = container.is_some();
        let limit = if claim_on {
            settings.storage.claim_check.max_payload_bytes
        } else {
            MAX_MESSAGE_BYTES as u64
        };
        let payload = self.payload(limit, how)?;
        let payload_len = payload.len();
        let text = self.encode(&payload, encoding, claim_on, how)?;
        drop(payload);
        // What the claim check hands on is recorded, so the report says what was stored.
        let stored = Stored::default();
        // Each store call gets its `store.<op>` span under the `send` span (traces on).
        let store = LayeredStore::wrap(
            LayeredStore::wrap(
                LayeredStore::wrap(ctx.store_below_claim(&settings)?, stored.clone()),
                crate::context::claim_check(&settings)?,
            ),
            ebbflow::store::Traced,
        );
        let queue = store.queue(&self.queue)?;
        let target = push::Target {
            off: self.no_trigger,
            http_url: self.trigger_url.clone(),
        };
        let (sent, failure, triggers) = block_on(async {
            let mut sent = Vec::new();
            let mut failure = None;
            if self.create {
                if let Err(e) = queue.create_if_missing().await {
                    return Err(CliError::from(e));
                }
                // And the claim check's container, as a worker's start-up creates it.
                if let Some(blobs) = &container {
                    blobs.create_if_missing().await.map_err(|e| {
                        CliError::runtime(format!(
                            "storage.claim_check.container: cannot create it: {e}"
                        ))
                    })?;
                }
            }
            // Up to SENDERS sends in flight: a round trip each, so 10,000 copies take seconds,
            // not minutes. The first failure stops further sends.
            let next = Arc::new(AtomicU32::new(0));
            let progress = Progress::new(format!("to {}", self.queue), self.count, self.progress);
            let done = progress.as_ref().map(Progress::counter);
            let ticker = progress.clone().map(|p| tokio::spawn(p.tick()));
            let text: Arc<str> = Arc::from(text.as_str());
            let mut senders = tokio::task::JoinSet::new();
            for _ in 0..SENDERS.min(self.count) {
                let (queue, next, text, count, done) = (
                    queue.clone(),
                    next.clone(),
                    text.clone(),
                    self.count,
                    done.clone(),
                );
                senders.spawn(async move {
                    let mut ids = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        // A `send <queue>` span per message when traces are exported (the
                        // OTEL_EXPORTER_OTLP_* variables), its context in the message on a
                        // queue with trace_context.
                        let span = ebbflow::observability::traces::send_span(queue.name());
                        let text = if trace_context {
                            ebbflow::observability::traces::inject(&span, text.to_string())
                        } else {
                            text.to_string()
                        };
                        let send = tracing::Instrument::instrument(
                            queue.send(&text, options),
                            span.clone(),
                        );
                        match send.await {
                            Ok(message) => {
                                span.record("messaging.message.id", message.id.as_str());
                                ids.push(message.id);
                                if let Some(done) = &done {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(e) => {
                                next.store(count, Ordering::Relaxed);
                                return (ids, Some(e));
                            }
                        }
                    }
                    (ids, None)
                });
            }
            while let Some(joined) = senders.join_next().await {
                let (ids, error) =
                    joined.map_err(|e| CliError::runtime(format!("a send task ended: {e}")))?;
                sent.extend(ids);
                if let Some(e) = error {
                    failure.get_or_insert(CliError::from(e));
                }
            }
            if let (Some(ticker), Some(progress)) = (ticker, &progress) {
                ticker.abort();
                progress.finish();
            }
            // Whatever reached the queue is announced, even after a failed send.
            let triggers = if sent.is_empty() {
                Vec::new()
            } else {
                let event = WorkDetected {
                    account: store.account(),
                    queue: self.queue.clone(),
                    payload_size: sent.len() as u64,
                };
                push::announce(&settings, &target, &event).await
            };
            Ok((sent, failure, triggers))
        })??;
        if !sent.is_empty() {
            say!(
                "sent {} message(s) to {} ({encoding}, {}{}{})",
                sent.len(),
                self.queue,
                stored.describe(
                    payload_len,
                    &text,
                    settings.storage.claim_check.threshold_bytes,
                    sent.len()
                ),
                match options.time_to_live {
                    TimeToLive::ServiceDefault => String::new(),
                    ttl => format!(", ttl {ttl}"),
                },
                if options.initial_delay.is_zero() {
                    String::new()
                } else {
                    format!(
                        ", visible in {}",
                        humantime::format_duration(options.initial_delay)
                    )
                },
            );
        }
        for id in &sent {
            say!("  {id}");
        }
        if let Some(e) = failure {
            if sent.is_empty() {
                return Err(match e {
                    CliError::Runtime(text) if text.contains("does not exist") => {
                        CliError::runtime(format!("{text}; or pass --create"))
                    }
                    other => other,
                });
            }
            // What was sent was announced: say how that went too.
            let triggered = match push::report(&triggers, self.no_trigger, &settings, &self.queue) {
                Ok(()) => String::new(),
                Err(why) => format!("; {why}"),
            };
            return Err(CliError::runtime(format!(
                "{} of {} sent to {}, then: {e}{triggered}",
                sent.len(),
                self.count,
                self.queue
            )));
        }
        push::report(&triggers, self.no_trigger, &settings, &self.queue)
    }

    fn send_options(&self) -> Result<SendOptions, CliError> {
        if self.delay > MAX_VISIBILITY {
            return Err(CliError::usage(format!(
                "--delay {}: at most 7d (the service's limit)",
                humantime::format_duration(self.delay)
            )));
        }
        if let Some(ttl) = self.ttl {
            if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
                return Err(CliError::usage(format!(
                    "--ttl {}: must be 1s..={} (the service counts whole seconds in 32 bits)",
                    humantime::format_duration(ttl),
                    humantime::format_duration(MAX_TTL)
                )));
            }
        }
        let ttl = self.ttl.unwrap_or(DEFAULT_TTL);
        // The service counts whole seconds (the store rounds a fraction up), and wants the
        // delay shorter than the time to live as it sees them: 500ms of 1s is 1s of 1s.
        if whole_seconds(self.delay) >= whole_seconds(ttl) {
            return Err(CliError::usage(format!(
                "--delay {} must be shorter than the time to live ({}{}){}: the message would \
                 expire before anyone could see it",
                humantime::format_duration(self.delay),
                humantime::format_duration(ttl),
                if self.ttl.is_none() {
                    ", the default; set --ttl"
                } else {
                    ""
                },
                if self.delay.subsec_nanos() > 0 || ttl.subsec_nanos() > 0 {
                    " in whole seconds, as the service counts them (a fraction rounds up)"
                } else {
                    ""
                }
            )));
        }
        Ok(SendOptions::default()
            .with_initial_delay(self.delay)
            .with_time_to_live(
                self.ttl
                    .map_or(TimeToLive::ServiceDefault, TimeToLive::After),
            ))
    }

    /// The payload bytes, from the argument or the file.
    fn payload(&self, limit: u64, how: &str) -> Result<Vec<u8>, CliError> {
        match (&self.text, &self.file) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(path)) if path.as_os_str() == "-" => read_bounded(
                std::io::stdin().lock(),
                "--file - (standard input)",
                limit,
                how,
            ),
            (None, Some(path)) => {
                let source = format!("--file {}", path.display());
                let file = std::fs::File::open(path)
                    .map_err(|e| CliError::usage(format!("{source}: {e}")))?;
                read_bounded(file, &source, limit, how)
            }
            (None, None) => Err(CliError::usage(
                "give the message text or --file FILE (see ebbflow enqueue --help)",
            )),
        }
    }

    /// The message text in the queue's encoding, refused here when the service would refuse
    /// it (over 64 KiB, or not text on a queue without encoding).
    fn encode(
        &self,
        payload: &[u8],
        encoding: Encoding,
        claim_on: bool,
        how: &str,
    ) -> Result<String, CliError> {
        let source = match &self.file {
            Some(path) => format!("--file {}", path.display()),
            None => "the message text".to_string(),
        };
        let text = encoding.encode(payload).map_err(|e| {
            CliError::usage(format!(
                "{source} is not UTF-8 ({}), and queue {} has encoding \"none\" (text as it \
                 is); a base64 queue takes any bytes",
                e.detail, self.queue
            ))
        })?;
        if let Some((at, c)) = text.char_indices().find(|(_, c)| !xml_char(*c)) {
            return Err(CliError::usage(format!(
                "{source} holds {c:?} at byte {at}, which the service cannot carry (its \
                 messages travel in XML); queue {} has encoding \"none\": use a base64 queue",
                self.queue
            )));
        }
        if text.len() > MAX_MESSAGE_BYTES && !claim_on {
            let hint = match encoding {
                Encoding::Base64 => format!(
                    " (base64 makes 3 bytes 4: a payload of at most {} bytes fits)",
                    MAX_MESSAGE_BYTES / 4 * 3
                ),
                _ => String::new(),
            };
            return Err(CliError::usage(format!(
                "{source} makes a message of {} bytes on queue {} ({encoding}); the service takes \
                 at most {MAX_MESSAGE_BYTES}{hint}: {}",
                text.len(),
                self.queue,
                how
            )));
        }
        Ok(text)
    }
}

/// Reads at most one byte more than `limit` (the largest message, or with the claim check the
/// largest payload), so a huge file (or `/dev/zero`) is refused without loading it; `source`
/// names the input in errors, `how` says how to turn the claim check on.
fn read_bounded(
    reader: impl Read,
    source: &str,
    limit: u64,
    how: &str,
) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::usage(format!("{source}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::usage(if limit > MAX_MESSAGE_BYTES as u64 {
            format!(
                "{source} holds more than {limit} bytes, the largest payload \
                 storage.claim_check.max_payload_bytes allows"
            )
        } else {
            format!(
                "{source} holds more than {MAX_MESSAGE_BYTES} bytes; the service takes at most \
                 {MAX_MESSAGE_BYTES} bytes of message text (a payload of at most {} bytes on a \
                 base64 queue): {how}",
                MAX_MESSAGE_BYTES / 4 * 3
            )
        }));
    }
    Ok(bytes)
}

/// `d` in whole seconds as the service gets it: a fraction rounds up.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whether XML 1.0 allows `c` in text: the service refuses a message with any other.
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A layer under the claim check that keeps the first text it hands to the queue: the message
/// as the service stores it (the text itself, or the claim check's reference).
#[derive(Clone, Default)]
struct Stored(Arc<Mutex<Option<String>>>);

impl Stored {
    /// The report's words for what went to the queue: `payload` bytes written as `text` (the
    /// claim check's `threshold` the most that stays text), `sent` times. A text the claim check
    /// passed on unchanged (also one that is itself a reference a producer wrote) is reported
    /// as plain text: only a reference the claim check made is described as one.
    fn describe(&self, payload: usize, text: &str, threshold: usize, sent: usize) -> String {
        let stored = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        let made_here = |s: &&String| TraceContext::unwrap(s).1 != text;
        let reference = stored
            .as_ref()
            .filter(made_here)
            .and_then(|s| ClaimRef::parse(TraceContext::unwrap(s).1).ok().flatten());
        let text = text.len();
        let stored_len = stored.as_deref().map_or(text, str::len);
        let Some(r) = reference else {
            return format!("{text} bytes of text each");
        };
        let each = if sent > 1 { " each" } else { "" };
        match (&r.container, &r.blob) {
            (Some(container), Some(blob)) => format!(
                "through the claim check: the payload of {payload} bytes ({text} bytes as text, \
                 over the {threshold}-byte limit) went to {}{} ({} bytes stored, {}), and the message is \
                 a {stored_len}-byte reference{each}",
                if sent > 1 {
                    format!("a blob of its own per message in container {container}, the first ")
                } else {
                    "blob ".to_string()
                },
                if sent > 1 { blob.clone() } else { format!("{container}/{blob}") },
                r.stored_len(),
                r.content_encoding,
            ),
            _ => format!(
                "through the claim check: the payload of {payload} bytes ({text} bytes as text) \
                 compressed with {} to {} bytes stays on the queue, as a {stored_len}-byte \
                 inline reference{each}",
                r.content_encoding,
                r.stored_len(),
            ),
        }
    }
}

impl QueueLayer for Stored {
    fn send<'a>(
        &'a self,
        inner: &'a dyn Queue,
        text: &'a str,
        options: SendOptions,
    ) -> impl std::future::Future<Output = Result<SentMessage, StoreError>> + Send + 'a {
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert_with(|| text.to_string());
        }
        inner.send(text, options)
    }
}

impl StoreLayer for Stored {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}
