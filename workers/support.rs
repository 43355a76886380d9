//! What the worker binaries share: log setup and reading numbers from the environment.

/// Logs to stderr, filtered by `RUST_LOG` (default `default_filter`).
pub fn init_logs(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A whole number from the environment variable `name`, or `default` when unset; an error
/// naming the variable when it is not a number.
pub fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name} = {v}: must be a whole number")),
        Err(_) => Ok(default),
    }
}
