//! A store wrapper whose calls a test can make hang, panic or act at a chosen moment: the
//! double for faults a real service cannot be made to show on cue.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ebbflow::store::{
    BackendKind, PeekedMessage, Queue, QueueStore, ReceivedMessage, SendOptions, SentMessage,
    StoreError, UpdatedMessage,
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
    /// The receive with this number (from 1) panics; 0: none.
    pub panic_on_receive: AtomicU32,
    /// Receives made so far.
    pub receives: AtomicU32,
    /// Messages the receives asked for, in order.
    pub asked: Mutex<Vec<u8>>,
    /// Called after each receive.
    pub after_receive: Mutex<Option<AfterReceive>>,
}

/// Wraps every queue of `inner` with `hooks`.
pub struct Hooked {
    inner: Arc<dyn QueueStore>,
    hooks: Arc<Hooks>,
}

impl Hooked {
    pub fn wrap(inner: Arc<dyn QueueStore>) -> (Arc<dyn QueueStore>, Arc<Hooks>) {
        let hooks = Arc::new(Hooks::default());
        let store = Arc::new(Self {
            inner,
            hooks: hooks.clone(),
        });
        (store, hooks)
    }
}

impl QueueStore for Hooked {
    fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, StoreError> {
        Ok(Arc::new(HookedQueue {
            inner: self.inner.queue(name)?,
            hooks: self.hooks.clone(),
        }))
    }

    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
}

struct HookedQueue {
    inner: Arc<dyn Queue>,
    hooks: Arc<Hooks>,
}

async fn hang_if(flag: &AtomicBool) {
    if flag.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl Queue for HookedQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn create_if_missing(&self) -> Result<(), StoreError> {
        self.inner.create_if_missing().await
    }
    async fn send(&self, text: &str, options: SendOptions) -> Result<SentMessage, StoreError> {
        self.inner.send(text, options).await
    }
    async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let n = self.hooks.receives.fetch_add(1, Ordering::SeqCst) + 1;
        self.hooks.asked.lock().unwrap().push(max);
        if self.hooks.panic_on_receive.load(Ordering::SeqCst) == n {
            panic!("injected panic in receive {n}");
        }
        let got = self.inner.receive(max, visibility).await?;
        if let Some(hook) = self.hooks.after_receive.lock().unwrap().as_ref() {
            hook(n, got.len());
        }
        Ok(got)
    }
    async fn delete(&self, id: &str, pop_receipt: &str) -> Result<(), StoreError> {
        hang_if(&self.hooks.hang_deletes).await;
        self.inner.delete(id, pop_receipt).await
    }
    async fn update(
        &self,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
        text: Option<&str>,
    ) -> Result<UpdatedMessage, StoreError> {
        hang_if(&self.hooks.hang_updates).await;
        self.inner.update(id, pop_receipt, visibility, text).await
    }
    async fn peek(&self, max: u8) -> Result<Vec<PeekedMessage>, StoreError> {
        self.inner.peek(max).await
    }
    async fn approximate_depth(&self) -> Result<u64, StoreError> {
        self.inner.approximate_depth().await
    }
}
