//! The cause kept inside a [`StoreError`](super::StoreError): the error the SDK (or the blob
//! client, or the codec) raised, with its own causes, for code that needs more than the text.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The lower-level error behind a [`StoreError`](super::StoreError), returned by its
/// [`source`](std::error::Error::source).
///
/// Walked as a chain (`source()` after `source()`), each level shows its text with secrets
/// redacted (`crate::secret::redact`): a generic error reporter that prints the whole
/// chain never prints an account key or a SAS signature. The original error is still there for
/// code that asks for it by type, through [`Cause::downcast_ref`] (an `azure_core::Error` to
/// read its HTTP status, say); its own text is not redacted.
///
/// Causes compare equal when their texts do, so two [`StoreError`](super::StoreError)s are
/// equal when they say the same.
///
/// ```
/// use ebbflow::store::{Cause, StoreError};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
/// let e = StoreError::Transient {
///     queue: "orders".into(),
///     detail: "connection reset".into(),
///     source: Some(Cause::new(io)),
/// };
/// let cause = std::error::Error::source(&e).expect("kept");
/// assert_eq!(cause.to_string(), "reset by peer");
/// let io = e.cause().and_then(|c| c.downcast_ref::<std::io::Error>()).expect("by type");
/// assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
/// ```
#[derive(Clone)]
pub struct Cause {
    /// This level's text, redacted.
    text: String,
    /// The next level down, redacted likewise.
    next: Option<Box<Cause>>,
    /// The error this level stands for (only the top level keeps it).
    original: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl Cause {
    /// Keeps `error` (and its chain of sources) as a cause.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self::from_arc(Arc::new(error))
    }

    /// Keeps a boxed error as a cause.
    pub fn from_boxed(error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        Self::from_arc(Arc::from(error))
    }

    fn from_arc(error: Arc<dyn Error + Send + Sync + 'static>) -> Self {
        let mut cause = Self::level(&*error);
        cause.original = Some(error);
        cause
    }

    /// `error` and the levels below it, as redacted texts.
    fn level(error: &(dyn Error + 'static)) -> Self {
        Self {
            text: crate::secret::redact(&error.to_string()),
            next: error.source().map(|s| Box::new(Self::level(s))),
            original: None,
        }
    }

    /// The original error, if it is a `T` (at the top level of the chain; walk further down
    /// with `source()` on what this returns).
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        let original: &(dyn Error + 'static) = &**self.original.as_ref()?;
        original.downcast_ref::<T>()
    }

    /// The original error, unredacted.
    pub fn original(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.original.as_deref()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain = Vec::new();
        let mut level = Some(self);
        while let Some(c) = level {
            chain.push(c.text.as_str());
            level = c.next.as_deref();
        }
        f.debug_tuple("Cause").field(&chain).finish()
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.next.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.next == other.next
    }
}

impl Eq for Cause {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request to https://a.queue.core.windows.net/q?sv=1&sig=SECRET failed")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_is_kept_redacted_and_the_original_reachable_by_type() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cause = Cause::new(Outer(io));
        let mut texts = Vec::new();
        let mut level: Option<&(dyn Error + 'static)> = Some(&cause);
        while let Some(e) = level {
            texts.push(e.to_string());
            level = e.source();
        }
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(!texts[0].contains("SECRET"), "{texts:?}");
        assert_eq!(texts[1], "refused");
        let outer = cause.downcast_ref::<Outer>().expect("the original by type");
        assert_eq!(outer.0.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(cause.downcast_ref::<std::io::Error>().is_none());
    }
}
