//! What the worker binaries share: reading numbers from the environment. (Logs are set up by
//! the library's one setup, `ebbflow::setup` / `ebbflow::observability::logging`.)

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
