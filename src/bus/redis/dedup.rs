//! Shared de-duplication marks on Redis (the `Dedup` layer's `across_replicas`):
//! `P:dedup:done:<key>` (a message with this key was handled, expiring after the layer's
//! window) and `P:dedup:run:<key>` (the holder's token, expiring after its lease unless
//! renewed). Each step is one script, so a claim never passes between another replica's done
//! mark and the removal of its running mark.

use std::sync::LazyLock;
use std::time::Duration;

use super::scripts::Script;
use super::{millis, Shared};
use crate::bus::{BusError, DedupClaim};

/// KEYS: done, run. ARGV: token, lease ms. `done`, `running` or `claimed`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'running'
",
    )
});

/// KEYS: run. ARGV: token, lease ms. 1 when the mark was still the token's and is extended.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: done, run. ARGV: token, done ms (0: not done). The done mark first, then the running
/// mark removed when it is still the token's.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local done_ms = tonumber(ARGV[2])
if done_ms > 0 then redis.call('SET', KEYS[1], '1', 'PX', done_ms) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
",
    )
});

fn keys(s: &Shared, key: &str) -> (String, String) {
    (
        s.key(&["dedup", "done", key]),
        s.key(&["dedup", "run", key]),
    )
}

pub(super) async fn claim(
    s: &Shared,
    key: &str,
    token: &str,
    lease: Duration,
) -> Result<DedupClaim, BusError> {
    let (done, run) = keys(s, key);
    let mut call = CLAIM.call(&[&done, &run]);
    call.arg(token).arg(millis(lease).max(1));
    let found: String = s.query("dedup claim", &call).await?;
    match found.as_str() {
        "done" => Ok(DedupClaim::Done),
        "claimed" => Ok(DedupClaim::Claimed),
        _ => Ok(DedupClaim::Running),
    }
}

pub(super) async fn renew(
    s: &Shared,
    key: &str,
    token: &str,
    lease: Duration,
) -> Result<bool, BusError> {
    let (_, run) = keys(s, key);
    let mut call = RENEW.call(&[&run]);
    call.arg(token).arg(millis(lease).max(1));
    let renewed: i64 = s.query("dedup renew", &call).await?;
    Ok(renewed == 1)
}

pub(super) async fn finish(
    s: &Shared,
    key: &str,
    token: &str,
    done_for: Option<Duration>,
) -> Result<(), BusError> {
    let (done, run) = keys(s, key);
    let mut call = FINISH.call(&[&done, &run]);
    call.arg(token)
        .arg(done_for.map_or(0, |d| millis(d).max(1)));
    s.query::<i64>("dedup finish", &call).await.map(|_| ())
}
