//! Poison after the dequeue limit, decided before the handler runs: a message received more
//! than `max_dequeue_count` times (default 5) goes to the poison queue without running, and one
//! on its last allowed try runs. On the embedded store under tokio's paused clock, at the
//! default settings.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::codec::Encoding;
use ebbflow::config::{QueueSettings, Settings};
use ebbflow::store::SendOptions;
use ebbflow::{Context, Handler, HandlerError};

use crate::common;

/// Records the texts it ran.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<BTreeSet<String>>>);

impl Handler for Records {
    type Message = String;
    async fn handle(&self, text: String, _: Context) -> Result<(), HandlerError> {
        self.0.lock().unwrap().insert(text);
        Ok(())
    }
}

/// "over" was received five times before (by workers that died, say), "last" four: the
/// worker's receive is over's sixth, past the default limit of 5, and last's fifth, its last
/// allowed try. Over goes to the poison queue unrun; last runs and is deleted.
#[tokio::test(start_paused = true)]
async fn past_the_dequeue_limit_a_message_is_poisoned_unrun_and_the_last_try_runs() {
    let store = common::memory();
    let q = common::fresh_queue(&store, "dequeuelimit").await;
    let hidden = Duration::from_secs(1);
    q.send("over", SendOptions::default()).await.unwrap();
    let first = q.receive(1, hidden).await.unwrap();
    assert_eq!(first[0].text, "over");
    tokio::time::sleep(hidden).await;
    q.send("last", SendOptions::default()).await.unwrap();
    for _ in 0..4 {
        assert_eq!(q.receive(32, hidden).await.unwrap().len(), 2);
        tokio::time::sleep(hidden).await;
    }
    let name = q.name().to_string();
    let mut queue = QueueSettings::default();
    queue.encoding = Encoding::None;
    let mut settings = Settings::default();
    settings.queues.insert(name.clone(), queue);
    let ran = Records::default();
    let worker = common::start(&store, settings, &name, ran.clone()).await;
    common::wait_for("both settled", Duration::from_secs(10), || {
        let snap = &worker.snapshot()[0];
        snap.handled + snap.poisoned >= 2
    })
    .await;
    let snap = worker.shutdown().await.queues.remove(0);
    assert_eq!((snap.handled, snap.poisoned), (1, 1), "{snap:?}");
    assert_eq!(*ran.0.lock().unwrap(), BTreeSet::from(["last".to_string()]));
    assert_eq!(q.approximate_depth().await.unwrap(), 0);
    let poison = store.queue(&format!("{name}-poison")).unwrap();
    let copies = poison.peek(32).await.unwrap();
    assert_eq!(copies.len(), 1);
    assert!(copies[0].text.contains("over"), "{}", copies[0].text);
}
