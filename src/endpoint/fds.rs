//! The file descriptors the endpoints' connection caps may take, checked at start-up against
//! the process's limit (`RLIMIT_NOFILE`, what `ulimit -n` shows): each open connection is one
//! descriptor, and the store's connections, the bus and the logs need theirs beside them. When
//! the caps and [`HEADROOM`] need more than the soft limit, the soft limit is raised to the hard
//! one (what any process may do); when even the hard limit is too low, the worker refuses to
//! start, naming the cap and the limit, rather than run out of descriptors under a flood
//! ("Too many open files" on store calls).

/// Descriptors kept for everything but the endpoints' connections: the store's and the bus's
/// connections, listening sockets, log and trace exporters, the runtime's own.
pub(crate) const HEADROOM: u64 = 256;

/// What the limit allows for caps that need `needed` descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The soft limit is enough.
    Enough,
    /// Raise the soft limit to this (the hard limit, or `needed` when the hard limit is
    /// unlimited).
    Raise(u64),
    /// Even the hard limit (given) is too low.
    Short(u64),
}

/// The plan for `needed` descriptors under a `soft` and `hard` limit (`None`: unlimited).
pub(crate) fn plan(needed: u64, soft: Option<u64>, hard: Option<u64>) -> Plan {
    match (soft, hard) {
        (None, _) => Plan::Enough,
        (Some(soft), _) if soft >= needed => Plan::Enough,
        (Some(_), None) => Plan::Raise(needed),
        (Some(_), Some(hard)) if hard >= needed => Plan::Raise(hard),
        (Some(_), Some(hard)) => Plan::Short(hard),
    }
}

/// Makes room for `needed` descriptors: `Ok(None)` when the limit allows them,
/// `Ok(Some((from, to)))` when the soft limit was raised, `Err((soft, hard))` with the limits in
/// force when it cannot allow them. Always `Ok(None)` off Unix.
pub(crate) fn make_room(needed: u64) -> Result<Option<(u64, u64)>, (u64, u64)> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let now = getrlimit(Resource::Nofile);
        let soft = now.current.unwrap_or(u64::MAX);
        let hard = now.maximum.unwrap_or(u64::MAX);
        match plan(needed, now.current, now.maximum) {
            Plan::Enough => Ok(None),
            Plan::Short(_) => Err((soft, hard)),
            Plan::Raise(to) => {
                let raised = Rlimit {
                    current: Some(to),
                    maximum: now.maximum,
                };
                match setrlimit(Resource::Nofile, raised) {
                    Ok(()) => Ok(Some((soft, to))),
                    Err(_) => Err((soft, hard)),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = needed;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_only_when_needed() {
        assert_eq!(plan(600, Some(1024), Some(1024)), Plan::Enough);
        assert_eq!(plan(600, None, None), Plan::Enough);
        assert_eq!(
            plan(5_320, Some(1024), Some(1_048_576)),
            Plan::Raise(1_048_576)
        );
        assert_eq!(plan(5_320, Some(1024), None), Plan::Raise(5_320));
        assert_eq!(plan(5_320, Some(1024), Some(4096)), Plan::Short(4096));
    }
}
