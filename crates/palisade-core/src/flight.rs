//! [`SingleFlight`]: one call per key at a time, run as a task of its own.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// A call under way: its answer once it has one (`Some`), `None` before.
type Answer<V> = watch::Receiver<Option<V>>;
type Calls<K, V> = Mutex<HashMap<K, Answer<V>>>;

/// One call per key at a time, awaited by every caller of that key, and
/// run as a Tokio task of its own: it ends (and whatever it does when it
/// ends, such as caching its answer, is done) even when every caller has
/// gone away, and a caller that goes away cancels nothing.
///
/// For calls that must not be made twice at once or cut short: a token
/// grant whose answer spends what it was given (a rotated refresh token),
/// an exchange an issuer should see once per caller token. The key leaves
/// the map when the call ends, before its answer is handed out, so a
/// caller that comes after the answer starts a new call (put the answer
/// where that caller finds it first, as a cache, when it should not).
///
/// Cloning is an `Arc` clone. Calls are made inside a Tokio runtime
/// (outside one, [`SingleFlight::run`] answers `None`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use palisade_core::authn::SingleFlight;
/// let calls: SingleFlight<&str, u32> = SingleFlight::new();
/// let (a, b) = tokio::join!(
///     calls.run("alice", || async { 1 }),
///     calls.run("alice", || async { 2 }),
/// );
/// // The second caller joined the first's call.
/// assert_eq!((a, b), (Some(1), Some(1)));
/// # }
/// ```
pub struct SingleFlight<K, V>(Arc<Calls<K, V>>);

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(HashMap::new())))
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let under_way = self.0.lock().map_or(0, |m| m.len());
        f.debug_struct("SingleFlight")
            .field("under_way", &under_way)
            .finish()
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// No call under way.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The answer of `key`'s call: the one under way, else a new one that
    /// `call` makes (spawned on the current Tokio runtime). `None` when the
    /// call ended without an answer (it panicked, or the runtime shut down
    /// before it ran), or when no Tokio runtime is current.
    pub async fn run<F>(&self, key: K, call: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.run_at_most(key, usize::MAX, call).await.unwrap_or(None)
    }

    /// As [`run`](Self::run), but no new call starts while `most` calls
    /// are under way: then [`Busy`], at once, and `call` is not made. A
    /// key whose call is under way is joined however many there are. For
    /// calls whose keys a flood can make distinct (one per caller token),
    /// so that what waits behind a bounded number of calls at a time is
    /// bounded too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use palisade_core::authn::{Busy, SingleFlight};
    /// let calls: SingleFlight<&str, u32> = SingleFlight::new();
    /// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let alice = tokio::spawn({
    ///     let calls = calls.clone();
    ///     async move { calls.run_at_most("alice", 1, || async move { rx.await.map_or(0, |()| 1) }).await }
    /// });
    /// tokio::task::yield_now().await;
    /// // Alice's call is under way: Bob's does not start, Alice's is joined.
    /// assert_eq!(calls.run_at_most("bob", 1, || async { 2 }).await, Err(Busy));
    /// let again = calls.run_at_most("alice", 1, || async { 3 });
    /// tx.send(()).unwrap();
    /// assert_eq!(again.await, Ok(Some(1)));
    /// assert_eq!(alice.await.unwrap(), Ok(Some(1)));
    /// assert_eq!(calls.run_at_most("bob", 1, || async { 2 }).await, Ok(Some(2)));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Busy`] when `most` calls of other keys are under way.
    pub async fn run_at_most<F>(
        &self,
        key: K,
        most: usize,
        call: impl FnOnce() -> F,
    ) -> Result<Option<V>, Busy>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let Some(mut answer) = self.begin(key, most, call)? else {
            return Ok(None);
        };
        // An error: the task ended without an answer.
        Ok(answer
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|a| a.clone()))
    }

    /// Starts `key`'s call unless one is under way, and returns at once: a
    /// renewal in the background, whose answer the call leaves where
    /// later callers look. `false` when no Tokio runtime is current.
    pub fn start<F>(&self, key: K, call: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.start_at_most(key, usize::MAX, call).unwrap_or(false)
    }

    /// As [`start`](Self::start), but no new call starts while `most` are
    /// under way (as [`run_at_most`](Self::run_at_most)).
    ///
    /// # Errors
    /// [`Busy`] when `most` calls of other keys are under way.
    pub fn start_at_most<F>(&self, key: K, most: usize, call: impl FnOnce() -> F) -> Result<bool, Busy>
    where
        F: Future<Output = V> + Send + 'static,
    {
        Ok(self.begin(key, most, call)?.is_some())
    }

    /// The answer channel of `key`'s call, the one under way or one
    /// `call` starts unless `most` are under way; `None` outside a Tokio
    /// runtime.
    fn begin<F>(&self, key: K, most: usize, call: impl FnOnce() -> F) -> Result<Option<Answer<V>>, Busy>
    where
        F: Future<Output = V> + Send + 'static,
    {
        // Outside a runtime there is nowhere to run the call.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(None);
        };
        let (answer, started) = {
            let mut calls = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(under_way) = calls.get(&key) {
                (under_way.clone(), None)
            } else if calls.len() >= most {
                return Err(Busy);
            } else {
                let (tx, rx) = watch::channel(None);
                calls.insert(key.clone(), rx.clone());
                (rx, Some(tx))
            }
        };
        // Started outside the lock: `call` and the guard's drop may take it.
        if let Some(tx) = started {
            let landed = Landed {
                calls: Arc::clone(&self.0),
                key,
                answer: answer.clone(),
            };
            let call = call();
            runtime.spawn(async move {
                let out = call.await;
                // Out of the map before the answer is: a caller after it
                // starts afresh (and finds what the call left behind).
                drop(landed);
                tx.send_replace(Some(out));
            });
        }
        Ok(Some(answer))
    }

    /// How many calls are under way.
    #[must_use]
    pub fn under_way(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// [`SingleFlight::run_at_most`]'s answer when the most calls it allows
/// are under way: no call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many calls under way")]
pub struct Busy;

/// Takes a call off the map when its task ends, however it ends (a panic,
/// a runtime dropping the task before it ran), if the entry is still its own.
struct Landed<K: Hash + Eq, V> {
    calls: Arc<Calls<K, V>>,
    key: K,
    answer: Answer<V>,
}

impl<K: Hash + Eq, V> Drop for Landed<K, V> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if calls.get(&self.key).is_some_and(|a| a.same_channel(&self.answer)) {
            calls.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    // On the paused clock: the sleeps order the callers exactly, however
    // loaded the machine.
    #[tokio::test(start_paused = true)]
    async fn a_call_outlives_the_callers_that_gave_up_and_runs_once() {
        let calls: SingleFlight<&str, usize> = SingleFlight::new();
        let made = Arc::new(AtomicUsize::new(0));
        let call = |made: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                made.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        let first = tokio::spawn({
            let (calls, made) = (calls.clone(), Arc::clone(&made));
            async move { calls.run("k", call(made)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = tokio::spawn({
            let (calls, made) = (calls.clone(), Arc::clone(&made));
            async move { calls.run("k", call(made)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A caller after the first gave up still joins the same call.
        let third = calls.run("k", call(Arc::clone(&made))).await;
        assert_eq!(third, Some(1));
        assert_eq!(second.await.unwrap(), Some(1));
        assert_eq!(made.load(Ordering::SeqCst), 1, "one call");
        assert_eq!(calls.under_way(), 0);
        // After the answer, a new call.
        assert_eq!(calls.run("k", call(Arc::clone(&made))).await, Some(2));
    }

    #[tokio::test]
    async fn a_started_call_runs_without_its_caller_and_is_joined() {
        let calls: SingleFlight<u8, u8> = SingleFlight::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(calls.start(1, || async move {
            let _ = rx.await;
            5
        }));
        assert_eq!(calls.under_way(), 1, "under way with no one waiting");
        assert!(calls.start(1, || async { unreachable!("a second call") }));
        tx.send(()).unwrap();
        assert_eq!(calls.run(1, || async { unreachable!("joined") }).await, Some(5));
        assert!(
            !std::thread::spawn(move || calls.start(2, || async { 0 }))
                .join()
                .unwrap(),
            "no runtime"
        );
    }

    #[test]
    fn outside_a_runtime_nothing_is_called() {
        let calls: SingleFlight<u8, u8> = SingleFlight::new();
        let mut run = std::pin::pin!(calls.run(1, || -> std::future::Ready<u8> { unreachable!("called") }));
        let waker = std::task::Waker::noop();
        let polled = run.as_mut().poll(&mut std::task::Context::from_waker(waker));
        assert_eq!(polled, std::task::Poll::Ready(None));
        assert_eq!(calls.under_way(), 0);
    }

    #[tokio::test]
    async fn a_call_that_panics_answers_none_and_leaves_the_map() {
        let calls: SingleFlight<u8, u8> = SingleFlight::new();
        let out = calls
            .run(1, || async {
                panic!("the call fails");
            })
            .await;
        assert_eq!(out, None);
        assert_eq!(calls.under_way(), 0);
        assert_eq!(calls.run(1, || async { 7 }).await, Some(7));
    }
}
