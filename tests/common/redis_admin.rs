//! A plain Redis connection for a test's own commands. Not in `common/redis.rs`: the command
//! line's tests share `common/` and do not depend on the `redis` crate; the `redis` and
//! `process` binaries include this file themselves.

use std::time::Duration;

/// A plain connection to `url` for a test's own commands (users, keys, raw stream reads), with
/// timeouts a loaded machine meets: with the client's defaults (1 s to connect and say hello,
/// 500 ms an answer) a Redis slow to answer under load fails the test before it tests anything.
pub(crate) async fn admin(url: &str) -> ::redis::aio::MultiplexedConnection {
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}
