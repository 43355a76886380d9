//! [`BusHandle`]: the typed API on top of a [`Bus`] transport. Publish serde events to an
//! [`Address`]; subscribe with a [`Filter`] (event type, sender, role) to a stream
//! ([`Subscription`]) or a handler ([`BusHandle::observe`]).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use super::request::{Reply, Request, Waiting};
use super::supervise;
use super::{
    Address, Bus, BusError, Envelope, Event, Health, Inbound, Member, Receipt, WorkNotice,
};
/// A handler's error (the same as `handler::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which events a subscriber wants. Every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    kind: Option<String>,
    from_instance: Option<String>,
    from_role: Option<String>,
}

impl Filter {
    /// Any event (a typed subscription still takes only its own type).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only events of this type name.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Only events sent by this instance.
    pub fn from_instance(mut self, id: impl Into<String>) -> Self {
        self.from_instance = Some(id.into());
        self
    }

    /// Only events sent by instances of this role.
    pub fn from_role(mut self, role: impl Into<String>) -> Self {
        self.from_role = Some(role.into());
        self
    }

    /// Whether `envelope` passes.
    pub fn matches(&self, envelope: &Envelope) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == envelope.kind)
            && self
                .from_instance
                .as_ref()
                .is_none_or(|i| *i == envelope.from)
            && self.from_role.as_ref().is_none_or(|r| *r == envelope.role)
    }
}

/// One received event, decoded.
pub struct Received<E> {
    /// The event.
    pub body: E,
    /// The sender's instance id.
    pub from: String,
    /// The sender's role.
    pub role: String,
    /// Where it was sent.
    pub to: Address,
    /// Its id.
    pub id: String,
    /// When it was sent, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// When it expires (its time to live), milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// The publisher's trace context, when it exported traces ([`Envelope::trace`]).
    pub trace: Option<crate::codec::TraceContext>,
    receipt: Option<Receipt>,
    bus: Arc<dyn Bus>,
}

impl<E: std::fmt::Debug> std::fmt::Debug for Received<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("body", &self.body)
            .field("from", &self.from)
            .field("role", &self.role)
            .field("to", &self.to)
            .field("id", &self.id)
            .field("needs_ack", &self.receipt.is_some())
            .finish()
    }
}

impl<E> Received<E> {
    /// Acknowledges a competing-consumer event ([`Address::OneOf`]) so it is not re-delivered;
    /// nothing for fan-out events. Unacknowledged, it goes to another instance of the role
    /// after `bus.claim_timeout`.
    ///
    /// # Errors
    ///
    /// [`BusError`] when the bus cannot record the acknowledgement (Redis unreachable or closed).
    pub async fn ack(&self) -> Result<(), BusError> {
        match &self.receipt {
            Some(r) => self.bus.ack(r).await,
            None => Ok(()),
        }
    }

    /// Whether this delivery must be acknowledged.
    pub fn needs_ack(&self) -> bool {
        self.receipt.is_some()
    }
}

/// A stream of events that passed a filter. Ends when the bus closes.
pub struct Subscription<E> {
    rx: mpsc::UnboundedReceiver<(Envelope, Option<Receipt>)>,
    bus: Arc<dyn Bus>,
    _type: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("event", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}

impl<E: Event> Subscription<E> {
    /// The next event; `None` once the bus is closed. Events that do not decode as `E` are
    /// logged and skipped (a competing one is acknowledged: no retry can decode it).
    pub async fn next(&mut self) -> Option<Received<E>> {
        loop {
            let (envelope, receipt) = self.rx.recv().await?;
            match serde_json::from_value::<E>(envelope.body) {
                Ok(body) => {
                    return Some(Received {
                        body,
                        from: envelope.from,
                        role: envelope.role,
                        to: envelope.to,
                        id: envelope.id,
                        sent_at_ms: envelope.sent_at_ms,
                        expires_at_ms: envelope.expires_at_ms,
                        trace: envelope.trace,
                        receipt,
                        bus: self.bus.clone(),
                    })
                }
                Err(e) => {
                    warn!(kind = %envelope.kind, from = %envelope.from, id = %envelope.id, error = %e,
                          "bus event does not decode; skipped");
                    if let Some(r) = receipt {
                        let _ = self.bus.ack(&r).await;
                    }
                }
            }
        }
    }
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::UnboundedSender<(Envelope, Option<Receipt>)>,
}

/// Receives work notices for the worker (see `crate::bus::work`).
pub(crate) type WorkSink = Arc<dyn Fn(WorkNotice, Option<Receipt>) + Send + Sync>;

struct Inner {
    bus: Arc<dyn Bus>,
    subscribers: Mutex<Vec<Subscriber>>,
    work: Mutex<Option<WorkSink>>,
    dispatching: std::sync::atomic::AtomicBool,
    closed: tokio_util::sync::CancellationToken,
    waiting: Waiting,
}

/// The typed bus API of one instance. Clones share it. A worker has one
/// (`RunningWorker::bus`, and `ctx.bus()` in handlers).
#[derive(Clone)]
pub struct BusHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusHandle")
            .field("member", self.inner.bus.member())
            .finish()
    }
}

impl BusHandle {
    /// The typed API over `bus`. Nothing is delivered before [`BusHandle::start`].
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                subscribers: Mutex::default(),
                work: Mutex::default(),
                dispatching: std::sync::atomic::AtomicBool::new(false),
                closed: tokio_util::sync::CancellationToken::new(),
                waiting: Waiting::default(),
            }),
        }
    }

    /// Starts delivering what the transport receives to subscribers (and work notices to the
    /// worker). Subscribe first, so nothing received at connect time is missed. Idempotent.
    pub fn start(&self) {
        if self
            .inner
            .dispatching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let Some(inbox) = self.inner.bus.take_inbox() else {
            return;
        };
        let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
        let inner = Arc::downgrade(&self.inner);
        let closed = self.inner.closed.clone();
        // Supervised: a panic while dispatching is logged and the dispatcher restarted (the
        // inbox is kept, so nothing waiting in it is lost).
        supervise::restarting("bus dispatcher", closed.clone(), move || {
            let (inbox, inner, closed) = (inbox.clone(), inner.clone(), closed.clone());
            async move {
                let mut inbox = inbox.lock().await;
                loop {
                    let inbound = tokio::select! {
                        _ = closed.cancelled() => break,
                        inbound = inbox.recv() => match inbound { Some(i) => i, None => break },
                    };
                    let Some(inner) = inner.upgrade() else { break };
                    inner.dispatch(inbound).await;
                }
                // The transport closed: end every subscription.
                closed.cancel();
                if let Some(inner) = inner.upgrade() {
                    if let Ok(mut subs) = inner.subscribers.lock() {
                        subs.clear();
                    }
                }
            }
        });
    }

    /// This instance.
    pub fn member(&self) -> &Member {
        self.inner.bus.member()
    }

    /// The transport.
    pub fn transport(&self) -> Arc<dyn Bus> {
        self.inner.bus.clone()
    }

    /// Connected or not.
    pub fn health(&self) -> Health {
        *self.inner.bus.health().borrow()
    }

    /// Publishes `event` to `to`, at least once to each addressed instance (see the
    /// addressing table in [`crate::bus`]). Transient failures are retried with back-off.
    ///
    /// # Errors
    /// [`BusError::TooLarge`] over `bus.max_envelope_size`, [`BusError::Full`] when a role's
    /// competing stream holds `bus.max_backlog` entries, [`BusError::Transport`] when Redis
    /// stays unreachable, [`BusError::Codec`] when the event does not serialize.
    pub async fn publish<E: Event>(&self, event: &E, to: Address) -> Result<(), BusError> {
        self.send_envelope(self.envelope(event, to)?).await
    }

    /// Publishes `event` to `to` and a carbon copy to this instance.
    ///
    /// # Errors
    /// As [`BusHandle::publish`].
    pub async fn publish_cc<E: Event>(&self, event: &E, to: Address) -> Result<(), BusError> {
        self.send_envelope(self.envelope(event, to)?.with_cc(true))
            .await
    }

    /// Publishes `event` to `to` at most once (Redis pub/sub): the lowest latency, nothing kept
    /// for an instance that is away or reconnecting. For events that are soon stale anyway
    /// (progress pulses, presence). A competing address ([`Address::OneOf`]) is still kept.
    ///
    /// # Errors
    /// As [`BusHandle::publish`].
    pub async fn publish_at_most_once<E: Event>(
        &self,
        event: &E,
        to: Address,
    ) -> Result<(), BusError> {
        let at_most_once = !to.is_competing();
        self.send_envelope(self.envelope(event, to)?.with_at_most_once(at_most_once))
            .await
    }

    /// Publishes `event` to `to`, dropped unhandled by whoever receives it after `ttl`.
    ///
    /// # Errors
    /// As [`BusHandle::publish`].
    pub async fn publish_with_ttl<E: Event>(
        &self,
        event: &E,
        to: Address,
        ttl: std::time::Duration,
    ) -> Result<(), BusError> {
        self.send_envelope(self.envelope(event, to)?.with_ttl(ttl))
            .await
    }

    fn envelope<E: Event>(&self, event: &E, to: Address) -> Result<Envelope, BusError> {
        let body = serde_json::to_value(event).map_err(|e| BusError::Codec {
            kind: E::KIND.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Envelope::new(E::KIND, self.member(), to, body))
    }

    async fn send_envelope(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inner.bus.send(&envelope).await
    }

    /// Sends `request` to `to` and waits up to `timeout` for the first reply (see
    /// [`Request`]). The request expires with the timeout: no responder handles it later.
    ///
    /// # Errors
    /// [`BusError::Timeout`] without a reply in time, [`BusError::Remote`] when the
    /// responder's handler failed (its text), [`BusError::Codec`] when the reply does not
    /// decode as `Q::Reply`, and what [`BusHandle::publish`] returns.
    pub async fn request<Q: Request>(
        &self,
        request: &Q,
        to: Address,
        timeout: std::time::Duration,
    ) -> Result<Q::Reply, BusError> {
        let shown = to.to_string();
        let envelope = self.envelope(request, to)?.with_ttl(timeout);
        let id = envelope.id.clone();
        let answer = self.inner.waiting.expect(&id);
        if let Err(e) = self.send_envelope(envelope).await {
            self.inner.waiting.forget(&id);
            return Err(e);
        }
        let (from, reply) = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(BusError::Closed),
            Err(_) => {
                self.inner.waiting.forget(&id);
                return Err(BusError::Timeout {
                    kind: Q::KIND.to_string(),
                    to: shown,
                    after: timeout,
                });
            }
        };
        if let Some(error) = reply.error {
            return Err(BusError::Remote {
                kind: Q::KIND.to_string(),
                from,
                error,
            });
        }
        serde_json::from_value(reply.ok.unwrap_or_default()).map_err(|e| BusError::Codec {
            kind: Q::KIND.to_string(),
            detail: format!("the reply does not decode: {e}"),
        })
    }

    /// Answers each request of type `Q` that passes `filter` with `handler`'s result, one at a
    /// time, until the bus closes: `Ok` travels back as the reply, an error (or a panic) as
    /// the requester's [`BusError::Remote`]. A competing request is acknowledged once answered.
    pub fn respond<Q, F, Fut>(&self, filter: Filter, handler: F) -> tokio::task::JoinHandle<()>
    where
        Q: Request,
        F: Fn(Received<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Q::Reply, BoxError>> + Send + 'static,
    {
        let mut subscription = self.subscribe::<Q>(filter);
        let me = self.member().clone();
        supervise::watched("bus responder", async move {
            while let Some(request) = subscription.next().await {
                let (bus, receipt) = (request.bus.clone(), request.receipt.clone());
                let (from, id) = (request.from.clone(), request.id.clone());
                let expires = request.expires_at_ms;
                let outcome = match tokio::spawn(handler(request)).await {
                    Ok(Ok(value)) => serde_json::to_value(value)
                        .map(|v| Reply {
                            ok: Some(v),
                            error: None,
                        })
                        .unwrap_or_else(|e| Reply {
                            ok: None,
                            error: Some(format!("the reply does not serialize: {e}")),
                        }),
                    Ok(Err(e)) => Reply {
                        ok: None,
                        error: Some(e.to_string()),
                    },
                    Err(e) => Reply {
                        ok: None,
                        error: Some(format!("the responder panicked: {e}")),
                    },
                };
                let body = serde_json::to_value(&outcome).unwrap_or_default();
                let mut reply =
                    Envelope::new(Reply::KIND, &me, Address::Instance(from.clone()), body);
                reply.reply_to = Some(id.clone());
                reply.expires_at_ms = expires;
                match bus.send(&reply).await {
                    Ok(()) => {
                        if let Some(r) = receipt {
                            let _ = bus.ack(&r).await;
                        }
                    }
                    Err(e) => {
                        warn!(kind = Q::KIND, %from, %id, error = %e, "cannot send the reply")
                    }
                }
            }
        })
    }

    /// Events of type `E` that pass `filter`, as a stream.
    pub fn subscribe<E: Event>(&self, filter: Filter) -> Subscription<E> {
        let (tx, rx) = mpsc::unbounded_channel();
        let filter = filter.kind(E::KIND);
        if let Ok(mut subs) = self.inner.subscribers.lock() {
            subs.push(Subscriber { filter, tx });
        }
        Subscription {
            rx,
            bus: self.inner.bus.clone(),
            _type: PhantomData,
        }
    }

    /// Runs `handler` for each event of type `E` that passes `filter`, one at a time, until the
    /// bus closes. A competing-consumer event is acknowledged when the handler returns `Ok`;
    /// after an error it is re-delivered (to this or another instance of the role) once
    /// `bus.claim_timeout` has passed.
    pub fn observe<E, F, Fut>(&self, filter: Filter, handler: F) -> tokio::task::JoinHandle<()>
    where
        E: Event,
        F: Fn(Received<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let mut subscription = self.subscribe::<E>(filter);
        supervise::watched("bus observer", async move {
            while let Some(event) = subscription.next().await {
                let receipt = event.receipt.clone();
                let bus = event.bus.clone();
                let (kind, from, id) = (E::KIND, event.from.clone(), event.id.clone());
                // A competing event may have waited here behind slower ones for longer than
                // the claim timeout, and another instance took it over: then that one
                // handles it, not this one. While the handler runs, the claim is renewed.
                let mut renewing = None;
                if let Some(r) = &receipt {
                    if let Ok(false) = bus.renew(r).await {
                        debug!(kind, %from, %id, "bus event taken over by another instance while it waited here; skipped");
                        continue;
                    }
                    if let Some(timeout) = bus.claim_timeout() {
                        let (bus, r) = (bus.clone(), r.clone());
                        renewing = Some(supervise::watched("bus claim renewal", async move {
                            loop {
                                tokio::time::sleep(timeout / 3).await;
                                if let Ok(false) = bus.renew(&r).await {
                                    return;
                                }
                            }
                        }));
                    }
                }
                // Its `process <type>` span continues the publisher's trace (traces exported).
                let span = crate::codec::spans::bus_process_span(kind, &id, event.trace.as_ref());
                // In a task of its own: a panicking handler is a failed event, not a dead observer.
                let outcome = match tokio::spawn(handler(event).instrument(span)).await {
                    Ok(outcome) => outcome,
                    Err(e) => Err(format!("the handler panicked: {e}").into()),
                };
                if let Some(task) = renewing {
                    task.abort();
                }
                match outcome {
                    Ok(()) => {
                        if let Some(r) = receipt {
                            if let Err(e) = bus.ack(&r).await {
                                warn!(kind, %from, %id, error = %e, "cannot acknowledge bus event");
                            }
                        }
                    }
                    Err(e) => {
                        warn!(kind, %from, %id, error = %e, "bus event handler failed");
                        if let Some(r) = receipt {
                            match bus.fail(&r, &e.to_string()).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    debug!(kind, %id, "bus event will be delivered again after the claim timeout")
                                }
                                Err(e) => {
                                    warn!(kind, %id, error = %e, "cannot record the failed bus event")
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    /// Leaves the bus: subscriptions end, presence is withdrawn, nothing more is received.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        if let Ok(mut subs) = self.inner.subscribers.lock() {
            subs.clear();
        }
        self.inner.bus.close().await;
    }

    pub(crate) fn set_work_sink(&self, sink: WorkSink) {
        if let Ok(mut w) = self.inner.work.lock() {
            *w = Some(sink);
        }
    }
}

impl Inner {
    async fn dispatch(&self, inbound: Inbound) {
        match inbound {
            Inbound::Work { notice, receipt } => {
                let sink = self.work.lock().ok().and_then(|w| w.clone());
                match sink {
                    Some(sink) => sink(notice, receipt),
                    None => {
                        if let Some(r) = receipt {
                            let _ = self.bus.ack(&r).await;
                        }
                    }
                }
            }
            Inbound::Event { envelope, receipt } => {
                if self.waiting.deliver(&envelope) {
                    return;
                }
                let mut delivered = 0;
                if let Ok(mut subs) = self.subscribers.lock() {
                    subs.retain(|s| !s.tx.is_closed());
                    for s in subs.iter().filter(|s| s.filter.matches(&envelope)) {
                        if s.tx.send((envelope.clone(), receipt.clone())).is_ok() {
                            delivered += 1;
                        }
                    }
                }
                if delivered == 0 {
                    debug!(kind = %envelope.kind, from = %envelope.from, "bus event without subscriber");
                    if let Some(r) = receipt {
                        // Nobody here handles this type: acknowledge rather than let it bounce
                        // between instances forever.
                        warn!(kind = %envelope.kind, from = %envelope.from, id = %envelope.id,
                              "competing-consumer event with no subscriber for its type on this instance; acknowledged and dropped");
                        let _ = self.bus.ack(&r).await;
                    }
                }
            }
        }
    }
}
