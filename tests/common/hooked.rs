//! A store layer whose calls a test can make hang, panic or act at a chosen moment: the
//! double for faults a real service cannot be made to show on cue. It overrides only the
//! operations it changes (receive, delete, update); the rest pass through the forwarding base.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebbflow::store::{
    Layered, LayeredStore, Queue, QueueLayer, QueueStore, ReceivedMessage, StoreError, StoreLayer,
    UpdatedMessage,
};

/// Runs after a receive returned, before its result goes back: (receive number from 1,
/// messages it got).
pub type AfterReceive = Box<dyn Fn(u32, usize) + Send + Sync>;

/// What the test controls.
#[derive(Default)]
pub struct Hooks {
    /// Updates (renewals, retries, releases) never answer.
    pub hang_updates: AtomicBool,
    /// Deletes never answer.
    pub hang_deletes: AtomicBool,
    /// Receives never answer (the worker under test takes nothing more; a receive of the
    /// test's own, on the store beneath, sees what is visible).
    pub hang_receives: AtomicBool,
    /// The receive with this number (from 1) panics; 0: none.
    pub panic_on_receive: AtomicU32,
    /// Every receive panics (a store that is broken for good).
    pub panic_every_receive: AtomicBool,
    /// Receives made so far.
    pub receives: AtomicU32,
    /// Messages the receives asked for, in order.
    pub asked: Mutex<Vec<u8>>,
    /// When each message id was first received (tokio's clock).
    pub received_at: Mutex<std::collections::BTreeMap<String, tokio::time::Instant>>,
    /// Called after each receive.
    pub after_receive: Mutex<Option<AfterReceive>>,
    /// While set, a receive that came back from the store (and ran `after_receive`) waits for
    /// a permit of this semaphore before it returns: a receive that lands at a chosen moment.
    pub receive_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

/// Puts `hooks` on every queue of a store.
#[derive(Clone)]
pub struct Hooked {
    hooks: Arc<Hooks>,
}

impl Hooked {
    /// `inner` with hooks on every queue, and the hooks.
    pub fn wrap(inner: Arc<dyn QueueStore>) -> (Arc<dyn QueueStore>, Arc<Hooks>) {
        let hooks = Arc::new(Hooks::default());
        let store = LayeredStore::wrap(
            inner,
            Self {
                hooks: hooks.clone(),
            },
        );
        (store, hooks)
    }
}

impl StoreLayer for Hooked {
    fn wrap(&self, queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
        Layered::wrap(queue, self.clone())
    }
}

async fn hang_if(flag: &AtomicBool) {
    if flag.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

impl QueueLayer for Hooked {
    async fn receive(
        &self,
        inner: &dyn Queue,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let hooks = &self.hooks;
        hang_if(&hooks.hang_receives).await;
        let n = hooks.receives.fetch_add(1, Ordering::SeqCst) + 1;
        hooks.asked.lock().unwrap().push(max);
        if hooks.panic_on_receive.load(Ordering::SeqCst) == n
            || hooks.panic_every_receive.load(Ordering::SeqCst)
        {
            panic!("injected panic in receive {n}");
        }
        let got = inner.receive(max, visibility).await?;
        {
            let now = tokio::time::Instant::now();
            let mut at = hooks.received_at.lock().unwrap();
            for m in &got {
                at.entry(m.id.clone()).or_insert(now);
            }
        }
        if let Some(hook) = hooks.after_receive.lock().unwrap().as_ref() {
            hook(n, got.len());
        }
        let gate = hooks.receive_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        Ok(got)
    }

    async fn delete(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
    ) -> Result<(), StoreError> {
        hang_if(&self.hooks.hang_deletes).await;
        inner.delete(id, pop_receipt).await
    }

    async fn update(
        &self,
        inner: &dyn Queue,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        hang_if(&self.hooks.hang_updates).await;
        inner.update(id, pop_receipt, visibility, text).await
    }
}
