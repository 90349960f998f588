//! [`Check`]: a result known now, or once a future completes.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed, sendable, `'static` future: what a [`Check`] waits on.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A result that is known now (the fast path: no credential, a cached
/// token, a policy without `CUSTOM` rules) or once a future completes (a
/// JWKS fetch, a first signature check, Kerberos work on the blocking pool,
/// an external authorizer).
///
/// Every step of Palisade that may have to wait answers with this one type:
/// [`Authenticator::authenticate`](crate::authn::Authenticator::authenticate)
/// (`Check<AuthOutcome>`), [`Guard::check`](crate::Guard::check)
/// (`Check<Decision>`), [`AccessPolicy::check`](crate::authz::AccessPolicy::check)
/// (`Check<AccessDecision>`) and
/// [`authorize_route`](crate::adapter::authorize_route). Callers that can
/// wait simply `.await` it; adapters on a poll-based stack match on it to
/// skip the allocation of a future on the fast path.
///
/// ```
/// use palisade_core::Check;
/// # async fn run() {
/// let now: Check<u8> = Check::Ready(1);
/// let later: Check<u8> = Check::pending(async { 2 });
/// assert_eq!(now.map(|n| n + 1).into_ready().ok(), Some(2));
/// assert_eq!(later.await, 2);
/// # }
/// ```
#[must_use = "a check decides nothing until its answer is read (awaited, or applied)"]
pub enum Check<T> {
    /// Known without waiting.
    Ready(T),
    /// Known once the future completes.
    Pending(BoxFuture<T>),
}

impl<T> Check<T> {
    /// A check that completes with `future`.
    pub fn pending(future: impl Future<Output = T> + Send + 'static) -> Self {
        Check::Pending(Box::pin(future))
    }

    /// The value when it is known now, else the check itself.
    ///
    /// # Errors
    /// The pending check, unchanged, when the value is not known yet.
    pub fn into_ready(self) -> Result<T, Self> {
        match self {
            Check::Ready(t) => Ok(t),
            pending @ Check::Pending(_) => Err(pending),
        }
    }

    /// Whether the value is known now.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        matches!(self, Check::Ready(_))
    }

    /// Transforms the value, now or when it arrives.
    pub fn map<U>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Check<U>
    where
        T: 'static,
    {
        match self {
            Check::Ready(t) => Check::Ready(f(t)),
            Check::Pending(fut) => Check::pending(async move { f(fut.await) }),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Check<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ready(t) => f.debug_tuple("Ready").field(t).finish(),
            Check::Pending(_) => f.write_str("Pending(<future>)"),
        }
    }
}

impl<T> IntoFuture for Check<T> {
    type Output = T;
    type IntoFuture = CheckFuture<T>;

    fn into_future(self) -> CheckFuture<T> {
        CheckFuture(match self {
            Check::Ready(t) => State::Ready(Some(t)),
            Check::Pending(fut) => State::Pending(fut),
        })
    }
}

/// The future of a [`Check`] (`check.await`).
///
/// # Panics
/// When polled again after it completed, as futures may.
#[must_use = "futures do nothing unless awaited"]
pub struct CheckFuture<T>(State<T>);

enum State<T> {
    Ready(Option<T>),
    Pending(BoxFuture<T>),
}

// The value is only ever moved out, never pinned: the future is `Unpin`
// whatever `T` is.
impl<T> Unpin for CheckFuture<T> {}

impl<T> fmt::Debug for CheckFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckFuture")
    }
}

impl<T> Future for CheckFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            State::Ready(t) => Poll::Ready(t.take().expect("CheckFuture polled after completion")),
            State::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_and_pending_checks_both_await_to_their_value() {
        assert_eq!(Check::Ready(3).await, 3);
        assert_eq!(Check::pending(async { 4 }).await, 4);
        assert_eq!(Check::pending(async { 4 }).map(|n| n * 2).await, 8);
    }

    #[test]
    fn a_pending_check_is_not_ready_and_prints_no_future() {
        let c = Check::pending(async { 1 });
        assert!(!c.is_ready());
        assert_eq!(format!("{c:?}"), "Pending(<future>)");
        assert!(c.into_ready().is_err());
    }
}
