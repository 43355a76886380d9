//! Connecting to Redis on a loaded machine: a Redis that answers late, within the connect
//! bound, is connected to, not refused.

use crate::common;

use std::time::Duration;

use common::redis::{member, settings, RedisServer};
use ebbflow::bus::{Bus, Health, RedisBus};

/// Redis stopped for 1.5 s while an instance connects (as a loaded machine may leave it without
/// CPU): the connection waits for its answer instead of refusing it (the client's default
/// bounds, 1 s to connect and say hello and 500 ms an answer, made a worker exit 2 with
/// `bus.url = ...: timed out`; seen failing so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_answers_after_a_second_and_a_half_is_connected_to() {
    let server = RedisServer::start();
    let s = settings(
        &server.url(),
        &common::unique("slow"),
        "worker",
        Duration::from_secs(1),
    );
    let began = std::time::Instant::now();
    server.freeze(Duration::from_millis(1_500));
    let bus = RedisBus::connect(&s, member("slow-1", "worker"))
        .await
        .expect("connected once Redis answers");
    // The premise: the answer did wait for the frozen Redis.
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(*bus.health().borrow(), Health::Up);
    bus.close().await;
}
