//! A progress line on stderr for commands that send many messages: rewritten in place every
//! second on a terminal (for [`MANY`] sends or more), one line a second with `--progress`
//! (whatever the count, piped or not), nothing otherwise (a script's stderr stays for errors,
//! and a few sends need no progress: their summary follows at once).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the line is written.
const EVERY: Duration = Duration::from_secs(1);

/// The fewest sends that show a progress line on a terminal without `--progress`.
pub const MANY: u32 = 100;

/// Where and how the line goes.
#[derive(Debug, Clone)]
pub struct Progress {
    what: String,
    total: u32,
    /// stderr is a terminal: rewrite one line (`\r`), else write a line each time.
    terminal: bool,
    started: Instant,
    done: Arc<AtomicU32>,
}

impl Progress {
    /// A progress line for `total` sends described by `what` (`to orders`), when it is worth
    /// showing: more than one send, and `forced` (`--progress`), or stderr a terminal and at
    /// least [`MANY`] sends.
    pub fn new(what: String, total: u32, forced: bool) -> Option<Self> {
        let terminal = std::io::stderr().is_terminal();
        (total > 1 && (forced || (terminal && total >= MANY))).then(|| Self {
            what,
            total,
            terminal,
            started: Instant::now(),
            done: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The counter the senders bump after each successful send.
    pub fn counter(&self) -> Arc<AtomicU32> {
        self.done.clone()
    }

    /// Writes the line every second until dropped (run it as a task, abort it when done).
    pub async fn tick(self) {
        let mut every = tokio::time::interval(EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            self.write(false);
        }
    }

    /// The last line, ending the rewritten one on a terminal.
    pub fn finish(&self) {
        self.write(true);
    }

    fn write(&self, last: bool) {
        let sent = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "sent {sent} of {} {} ({:.0}/s)",
            self.total,
            self.what,
            f64::from(sent) / secs
        );
        let mut err = std::io::stderr().lock();
        let _ = match (self.terminal, last) {
            // Back to the line's start, clear it, write it again.
            (true, false) => write!(err, "\r\x1b[K{line}"),
            (true, true) => writeln!(err, "\r\x1b[K{line}"),
            (false, _) => writeln!(err, "{line}"),
        };
        let _ = err.flush();
    }
}
