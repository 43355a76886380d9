//! Function handlers: an async function or closure as a queue's handler.

use std::future::Future;
use std::marker::PhantomData;

use super::{Context, Handler, HandlerError, Payload};

/// A handler made of a function or closure taking the payload and the [`Context`]
/// ([`from_fn`], or [`crate::Worker::handler_fn`]).
///
/// Shared state is captured: clone an `Arc` into the closure (`move |payload, ctx| { let db =
/// db.clone(); async move { ... } }`); the closure itself is shared by every message's run, so
/// it is `Fn`, and each call returns its own future.
pub struct FnHandler<F, P> {
    f: F,
    payload: PhantomData<fn() -> P>,
}

impl<F, P> std::fmt::Debug for FnHandler<F, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnHandler")
            .field("payload", &std::any::type_name::<P>())
            .finish()
    }
}

/// `f` as a [`Handler`]: `f(payload, ctx)` handles one message, its payload decoded into `P`
/// (`Json<T>`, `String` or `Vec<u8>`).
///
/// ```
/// use std::sync::Arc;
/// use ebbflow::handler::{from_fn, Handler};
/// use ebbflow::{Context, HandlerError, Json};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
/// let orders = from_fn(move |Json(order): Json<Order>, _ctx: Context| {
///     let seen = seen.clone();
///     async move {
///         seen.lock().unwrap().push(order.id);
///         Ok::<(), HandlerError>(())
///     }
/// });
/// # fn is_handler(_: &impl Handler) {}
/// # is_handler(&orders);
/// ```
pub fn from_fn<F, P, Fut>(f: F) -> FnHandler<F, P>
where
    F: Fn(P, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    P: Payload,
{
    FnHandler {
        f,
        payload: PhantomData,
    }
}

impl<F, P, Fut> Handler for FnHandler<F, P>
where
    F: Fn(P, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    P: Payload,
{
    type Message = P;

    fn handle(
        &self,
        message: P,
        ctx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.f)(message, ctx)
    }
}
