//! Hot reload: a running [`Guard`] takes a new policy file without a
//! restart, as a sidecar takes new configuration.
//!
//! A [`PolicyReloader`] loads the file again and builds a guard from it
//! with the application's own function (the one it used at start-up), then
//! swaps it in with [`Guard::replace`]: atomically, requests in flight
//! finish under the policy they started with, and state still valid
//! survives (an unchanged JWT issuer keeps its keys and verified tokens).
//! A file that does not load or compile changes nothing: the old policy
//! stays in force and one error line names the file, document and field.
//! A file emptied (white space only, as a writer that truncated it leaves
//! it) is not loaded, as at start-up; one of comments only is a policy of
//! no documents.
//! The watch tries again, every 30 s, contents refused for what lies
//! outside them (a refusal that carries an I/O error: a key file they name
//! not there yet, a store that did not answer), until they are in force or
//! change.
//!
//! It reloads when told ([`PolicyReloader::reload`]), when the file's
//! contents, or those of a file it names (a secret, a key, a CA bundle),
//! change ([`PolicyReloader::watch`]) and on `SIGHUP`
//! ([`PolicyReloader::reload_on_sighup`]). Every attempt is counted in
//! [`CONFIG_RELOADS`]; whether the last one put the file in force, and
//! when one last did, are the gauges [`CONFIG_LAST_RELOAD_OK`] and
//! [`CONFIG_LAST_RELOAD_SUCCESS`] (the file the reloader starts with
//! counts as put in force), so an alert on a refused file lasts as long as
//! the file does.
//!
//! ```
//! use palisade_core::policy::{PolicySet, Workload};
//! use palisade_core::reload::PolicyReloader;
//! use palisade_core::Guard;
//! # let dir = std::env::temp_dir().join(format!("palisade-reload-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("policy.yaml");
//! std::fs::write(&path, "# no policy yet\n")?;
//! let workload = Workload::new("details", "default");
//! let build = move |set: &PolicySet| -> Result<Guard, palisade_core::policy::PolicyError> {
//!     Guard::builder()
//!         .access_policy_from(&set.for_workload(&workload), &Default::default())?
//!         .build()
//!         .map_err(|e| palisade_core::policy::PolicyError::new(set.source(), e.to_string()))
//! };
//! let guard = build(&PolicySet::from_file(&path)?)?;
//! let reloader = PolicyReloader::new(&path, &guard, build);
//! std::fs::write(
//!     &path,
//!     "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: ALOW}\n",
//! )?;
//! // Refused: the guard keeps the policy it has, the error names the field.
//! let err = reloader.reload().unwrap_err();
//! assert!(err.to_string().contains("action"), "{err}");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::guard::{Guard, LOG_TARGET};
use crate::metrics::{CONFIG_LAST_RELOAD_OK, CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS};
use crate::policy::{PolicyError, PolicySet, digest};

type Build = dyn Fn(&PolicySet) -> Result<Guard, PolicyError> + Send + Sync;

/// How long the watch waits before loading again contents refused for
/// what lies outside them ([`PolicyReloader::watch`]).
const RETRY_AFTER: Duration = Duration::from_secs(30);

struct Inner {
    path: PathBuf,
    guard: Guard,
    build: Box<Build>,
    /// What was last loaded or refused. Held while a reload runs, so one
    /// reload happens at a time and a change is never loaded twice.
    last: Mutex<Last>,
    retry_after: Duration,
    /// What the watch saw change, not yet loaded: a change is loaded once
    /// two looks in a row see the same contents, so a file caught halfway
    /// through a rewrite in place is never put in force.
    settling: Mutex<Option<u64>>,
    /// Since when the watch has not been able to read the file, if it has
    /// not; said once it has failed for [`UNREADABLE_AFTER`], then once a
    /// minute while it lasts.
    unreadable: Mutex<Option<Instant>>,
    unreadable_said: crate::logging::Sparse,
    /// Whether the watch counted the file unreadable as a failed reload
    /// (once per stretch it lasts).
    unreadable_counted: std::sync::atomic::AtomicBool,
    /// What this reloader last set [`CONFIG_LAST_RELOAD_OK`] to: a look
    /// sets it again only when that changes (a process with two reloaders
    /// would have them overwrite each other at every look).
    published_ok: std::sync::atomic::AtomicBool,
    unreadable_after: Duration,
    /// Whether a watch thread runs: a second one would share `settling`
    /// and defeat it.
    watching: std::sync::atomic::AtomicBool,
}

/// The shortest interval between a watch's looks: two looks a moment
/// apart would put in force a file its writer paused in.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long the watch finds the file unreadable (missing, not allowed, a
/// directory) before saying so: a file replaced by a rename is missing for
/// a moment, which is no change.
const UNREADABLE_AFTER: Duration = Duration::from_secs(5);

/// What a reloader last did.
#[derive(Default)]
struct Last {
    /// The digest of the contents last loaded (or refused): a change is a
    /// difference.
    digest: Option<u64>,
    /// The files those contents name (secrets, keys, CA bundles), and the
    /// digest of what they held before the load read them: a change of
    /// one (a rotated secret) is a change too.
    named: Vec<PathBuf>,
    named_digest: u64,
    /// Contents refused for what lies outside them (a refusal that carries
    /// an I/O error: a secret or key file they name not there yet, a store
    /// that did not answer): when the watch loads them again, until they
    /// are put in force or change; and the refusal's message, logged once.
    retry: Option<(Instant, String)>,
    /// What the tries of the contents last loaded said of themselves at
    /// `WARN` ([`crate::logging::saying_again`]): a retry says it at
    /// `DEBUG`, and what no earlier try reached at `WARN`.
    said: HashSet<String>,
    /// Whether the contents of `digest` were put in force (not refused).
    in_force: bool,
}

/// Keeps a [`Guard`] in step with its policy file. Cloning shares it.
#[derive(Clone)]
pub struct PolicyReloader(Arc<Inner>);

impl fmt::Debug for PolicyReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyReloader")
            .field("path", &self.0.path)
            .finish_non_exhaustive()
    }
}

impl PolicyReloader {
    /// A reloader of `guard` from the file at `path`, with `build` making a
    /// guard from the loaded documents (the function the application built
    /// `guard` with). The file as it is now counts as loaded, and the files
    /// it names (secrets, keys, CA bundles) as they are now; say what
    /// `guard` was built from with [`loaded_from`](Self::loaded_from), and
    /// a change of either made in between is loaded too.
    pub fn new(
        path: impl AsRef<Path>,
        guard: &Guard,
        build: impl Fn(&PolicySet) -> Result<Guard, PolicyError> + Send + Sync + 'static,
    ) -> Self {
        let path = path.as_ref().to_path_buf();
        let contents = read_watched(&path).ok();
        // The files it names are watched from now on, not only from the
        // first reload: a Secret rotated in place before the policy file
        // changes is loaded too. (Read quietly: start-up said what the
        // file says.)
        let named = contents
            .as_deref()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|text| PolicySet::quietly(text, &path.display().to_string()))
            .map(|set| set.files_named())
            .unwrap_or_default();
        let last = Last {
            digest: contents.map(|c| digest(&c)),
            named_digest: files_digest(&named),
            named,
            in_force: true,
            ..Last::default()
        };
        // Both results on /metrics from the start, at zero.
        for result in ["success", "failure"] {
            metrics::counter!(CONFIG_RELOADS, "result" => result).increment(0);
        }
        let reloader = Self(Arc::new(Inner {
            path,
            guard: guard.clone(),
            build: Box::new(build),
            last: Mutex::new(last),
            retry_after: RETRY_AFTER,
            settling: Mutex::new(None),
            unreadable: Mutex::new(None),
            unreadable_said: crate::logging::Sparse::per_minute(),
            unreadable_counted: std::sync::atomic::AtomicBool::new(false),
            published_ok: std::sync::atomic::AtomicBool::new(true),
            unreadable_after: UNREADABLE_AFTER,
            watching: std::sync::atomic::AtomicBool::new(false),
        }));
        // The file as it is counts as put in force.
        reloader.put_in_force();
        reloader
    }

    #[cfg(test)]
    fn unreadable_after(mut self, pause: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.unreadable_after = pause;
        }
        self
    }

    #[cfg(test)]
    fn retrying_after(mut self, pause: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.retry_after = pause;
        }
        self
    }

    /// The documents the guard was built from (read from this file at
    /// start-up): a file that changed since they were read, before this
    /// reloader was made, is loaded at the watch's next looks; the files
    /// they name are watched from now on (without it, from the first
    /// reload).
    #[must_use]
    pub fn loaded_from(self, set: &PolicySet) -> Self {
        let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.digest = Some(set.digest());
        last.named = set.files_named();
        last.named_digest = set.named_digest().unwrap_or_else(|| files_digest(&last.named));
        drop(last);
        self
    }

    /// The policy file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Loads and compiles the file and puts it in force.
    ///
    /// # Errors
    /// The [`PolicyError`] naming the file, document and field that cannot
    /// be used; the policy in force stays, and the error is logged (at
    /// `ERROR`).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
        self.load(&mut last, read_watched(&self.0.path), false)
    }

    /// [`reload`](Self::reload) once the file reads the same twice `pause`
    /// apart (a signal may come while it is still being written), looking
    /// at most `looks` times; a file that never does is refused.
    fn reload_settled(&self, pause: Duration, looks: usize) -> Result<(), PolicyError> {
        self.settle(pause, looks, || read_watched(&self.0.path))
    }

    /// [`reload_settled`](Self::reload_settled) with the file read by `read`.
    fn settle(
        &self,
        pause: Duration,
        looks: usize,
        mut read: impl FnMut() -> std::io::Result<Vec<u8>>,
    ) -> Result<(), PolicyError> {
        let mut before = read();
        for _ in 1..looks {
            std::thread::sleep(pause);
            let now = read();
            // A file that cannot be read twice in a row is refused as such;
            // once is an editor's save under way (the file renamed away
            // before the new one is written), and the looks go on.
            let same = match (&before, &now) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            };
            before = now;
            if same {
                let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
                // Read again under the lock: contents another reload put in
                // force meanwhile are not replaced by these older ones.
                if before.is_err() {
                    return self.load(&mut last, before, false);
                }
                let held = read();
                if matches!((&before, &held), (Ok(a), Ok(b)) if a == b) {
                    return self.load(&mut last, held, false);
                }
                before = held;
            }
        }
        self.refused(
            PolicyError::new(
                &self.0.path.display().to_string(),
                format!(
                    "still changing after {looks} looks {pause:?} apart: not loaded; the policy in force stays"
                ),
            ),
            false,
        )
    }

    /// Reloads if the file's contents differ from those last loaded (or
    /// refused) and are the same as at the look before (a file being
    /// rewritten in place is read only once it stays the same), or the
    /// files they name (secrets, keys, CA bundles; not a
    /// `DestinationRule`'s, which its TLS watches) do so, or if they
    /// were refused for what lies outside them (a file they name, a store)
    /// 30 s ago or more; `None` when there is nothing to load yet.
    ///
    /// # Errors
    /// As [`PolicyReloader::reload`].
    pub fn reload_if_changed(&self) -> Option<Result<(), PolicyError>> {
        // A file being replaced may be missing for a moment: not a change;
        // one that stays unreadable is said.
        use std::sync::atomic::Ordering;
        let now = match read_watched(&self.0.path) {
            Ok(now) => {
                *self.0.unreadable.lock().unwrap_or_else(PoisonError::into_inner) = None;
                now
            }
            Err(e) => {
                let since = *self
                    .0
                    .unreadable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(Instant::now);
                if since.elapsed() >= self.0.unreadable_after {
                    // A reload that cannot happen: what a restart would
                    // meet too.
                    if !self.0.unreadable_counted.swap(true, Ordering::AcqRel) {
                        self.failed();
                    }
                    if self.0.unreadable_said.due() {
                        tracing::error!(target: LOG_TARGET, file = %self.0.path.display(), error = %e, "the policy file cannot be read: the policy in force stays (said once a minute while it lasts)");
                    }
                }
                return None;
            }
        };
        let seen = digest(&now);
        // Readable (again): a later stretch unreadable counts anew.
        self.0.unreadable_counted.store(false, Ordering::Release);
        // The files it names, read outside the locks (a reload or a signal
        // does not wait on them).
        let named_files = self
            .0
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .named
            .clone();
        let named = files_digest(&named_files);
        let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut settling = self.0.settling.lock().unwrap_or_else(PoisonError::into_inner);
        if last.digest == Some(seen) {
            // The file as last loaded or refused: its answer stands, again
            // after the file could not be read for a while, or after a
            // reload refused for it (unreadable, still changing).
            if self.0.published_ok.load(Ordering::Acquire) != last.in_force {
                self.publish(last.in_force);
            }
            // A file it names changed (a secret rotated, a key file that
            // was missing written): loaded once two looks agree, as the
            // file itself.
            if last.named == named_files && named != last.named_digest {
                let both = seen.rotate_left(1) ^ named;
                if *settling != Some(both) {
                    *settling = Some(both);
                    return None;
                }
                *settling = None;
                drop(settling);
                // Taken as seen whatever the load does: contents that do
                // not load keep the files of those in force, and are not
                // loaded again at every look for their change.
                last.named_digest = named;
                return Some(self.load(&mut last, Ok(now), false));
            }
            *settling = None;
            let due = last.retry.as_ref().is_some_and(|(at, _)| Instant::now() >= *at);
            drop(settling);
            return due.then(|| self.load(&mut last, Ok(now), true));
        }
        if *settling != Some(seen) {
            *settling = Some(seen);
            return None;
        }
        *settling = None;
        drop(settling);
        Some(self.load(&mut last, Ok(now), false))
    }

    /// Sets [`CONFIG_LAST_RELOAD_OK`]: whether the file last read is in
    /// force.
    fn publish(&self, ok: bool) {
        self.0
            .published_ok
            .store(ok, std::sync::atomic::Ordering::Release);
        metrics::gauge!(CONFIG_LAST_RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
    }

    /// A policy file put in force now: the gauges say so, and when.
    fn put_in_force(&self) {
        self.publish(true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(now);
    }

    /// A reload that did not put the file in force: counted, and the gauge
    /// says so.
    fn failed(&self) {
        metrics::counter!(CONFIG_RELOADS, "result" => "failure").increment(1);
        self.publish(false);
    }

    /// A reload refused: [`failed`](Self::failed), said in one error line
    /// (`again`, the same refusal as the last attempt's: at debug level),
    /// the policy in force kept.
    fn refused(&self, e: PolicyError, again: bool) -> Result<(), PolicyError> {
        self.failed();
        if again {
            tracing::debug!(target: LOG_TARGET, error = %e, "policy still not reloaded; the previous one stays in force");
        } else {
            tracing::error!(target: LOG_TARGET, error = %e, "policy not reloaded; the previous one stays in force");
        }
        Err(e)
    }

    /// Loads `contents` and puts it in force; `last` (held: one reload at
    /// a time) becomes what was done. `retrying`: the watch loading again
    /// contents refused for what lies outside them, whose refusal, the same
    /// again, is not logged again at error level.
    fn load(
        &self,
        last: &mut Last,
        contents: std::io::Result<Vec<u8>>,
        retrying: bool,
    ) -> Result<(), PolicyError> {
        // A file that cannot be read leaves a pending retry pending, and
        // whether the contents last read are in force.
        let read = contents.is_ok();
        let refused_before = match &contents {
            Ok(c) => {
                last.digest = Some(digest(c));
                last.retry.take().map(|(_, message)| message)
            }
            Err(_) => None,
        };
        let name = self.0.path.display().to_string();
        // Contents read anew (or a reload asked for) say all they say
        // again; a file that cannot be read leaves the retry, and what its
        // tries said, as they are.
        if !retrying && contents.is_ok() {
            last.said.clear();
        }
        let mut last_named = (std::mem::take(&mut last.named), last.named_digest);
        let said = &mut last.said;
        let loaded = contents
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))
            .and_then(|c| {
                // A panic (the loader's, or the application's function) is
                // a file that did not load, not the end of reloading.
                // What the contents say of themselves, said by an earlier
                // try, is said at debug level by the retries.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::logging::saying_again(said, || {
                        let text =
                            String::from_utf8(c).map_err(|_| PolicyError::new(&name, "not UTF-8 text"))?;
                        // A file of white space only is refused, as at start-up.
                        let set = PolicySet::from_file_text(&text, &name)?;
                        // What the files it names hold as they are read now.
                        last_named.0 = set.files_named();
                        last_named.1 = files_digest(&last_named.0);
                        (self.0.build)(&set)
                    })
                }))
                .unwrap_or_else(|_| {
                    Err(PolicyError::new(
                        &name,
                        "loading the file or building the guard panicked",
                    ))
                })
            });
        (last.named, last.named_digest) = last_named;
        if read {
            last.in_force = loaded.is_ok();
        }
        let result = match loaded {
            Ok(guard) => {
                self.0.guard.replace(guard);
                metrics::counter!(CONFIG_RELOADS, "result" => "success").increment(1);
                self.put_in_force();
                tracing::info!(target: LOG_TARGET, file = %name, "policy reloaded");
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                let again = retrying && refused_before.as_deref() == Some(message.as_str());
                // What lies outside the file, which may change by itself:
                // a file a document names that cannot be read here, a
                // store that did not answer (refusals that carry an I/O
                // error). The file's text alone gives the same answer again.
                if e.io_error().is_some() {
                    last.retry = Some((Instant::now() + self.0.retry_after, message));
                }
                self.refused(e, again)
            }
        };
        // What the tries said matters while a retry is pending: kept while
        // one is (the file could not be read, or a file it names), else
        // let go.
        if last.retry.is_none() {
            last.said = HashSet::new();
        }
        result
    }

    /// Looks at the file every `interval` on a background thread and
    /// reloads when its contents changed and stayed so for one more look
    /// ([`PolicyReloader::reload_if_changed`]), or a file they name did
    /// (a `clientSecretFile`, a session or client key, a `caFile`: a
    /// Kubernetes Secret updated in place); the thread ends when the
    /// last clone of this reloader is dropped. Write the file by renaming
    /// a complete one over it, as Kubernetes does for a mounted ConfigMap,
    /// and no reader ever sees it half written. An `interval` under 100 ms
    /// is taken as 100 ms; a reloader has one watch (a second call, on it
    /// or a clone, does nothing).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn watch(&self, interval: Duration) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.0.watching.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let interval = interval.max(MIN_WATCH_INTERVAL);
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        std::thread::Builder::new()
            .name("palisade-policy-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    let _ = PolicyReloader(inner).reload_if_changed();
                }
            })
            .inspect_err(|_| self.0.watching.store(false, Ordering::Release))?;
        Ok(())
    }

    /// Reloads on every `SIGHUP`, from a task on the current tokio runtime
    /// (reading and compiling on its blocking pool), once the file reads
    /// the same twice 200 ms apart (for at most 5 s). The task lives as long
    /// as the runtime and keeps this reloader: call it once, at start-up,
    /// not from a per-worker factory (each call adds a reload per signal).
    ///
    /// # Errors
    /// When the signal handler cannot be installed.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let reloader = this.clone();
                // Reading and compiling are blocking work.
                let _ = tokio::task::spawn_blocking(move || {
                    reloader.reload_settled(Duration::from_millis(200), 25)
                })
                .await;
            }
        });
        Ok(())
    }
}

/// The digest of what `files` hold now (a file that cannot be read counts
/// as such): a change of one is a change of the digest; 0 for none. Keyed
/// at random for the process, so it is no lasting fingerprint of a
/// secret; a file over 1 MiB (no secret, key or bundle is) is told by its
/// length and time of change instead of read whole. How the reloader tells
/// that a file the policy names changed; for an application that keeps
/// state made from such files (a client secret) beside its guard.
#[must_use]
pub fn files_digest(files: &[PathBuf]) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    if files.is_empty() {
        return 0;
    }
    let mut h = KEY.get_or_init(Default::default).build_hasher();
    for file in files {
        match std::fs::metadata(file) {
            Ok(m) if m.len() > NAMED_READ_MAX => (m.len(), m.modified().ok()).hash(&mut h),
            _ => match std::fs::read(file) {
                Ok(contents) => contents.hash(&mut h),
                Err(e) => format!("{:?}", e.kind()).hash(&mut h),
            },
        }
    }
    h.finish()
}

/// The policy file as a reloader reads it, again and again: a regular
/// file (or a link to one) only ([`crate::policy::read_policy_file`]
/// otherwise): a named pipe read again would block until another writer
/// came, and `/dev/stdin` would be empty.
fn read_watched(path: &Path) -> std::io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file: read at start-up, not reloaded",
        ));
    }
    crate::policy::read_policy_file(path)
}

/// The largest file a reloader reads whole to tell a change of it.
const NAMED_READ_MAX: u64 = 1 << 20;

/// What a hot reload must not lose: one value per key for the whole
/// process, kept while something uses it. An authenticator that a reload
/// builds anew (from the new file, while the old one still serves) finds
/// the value the old one made for the same key (a connected store, a
/// random key, a discovery document) instead of making another and losing
/// what the first holds in memory; once no one uses it, it goes, and the
/// next one is made anew.
///
/// ```
/// use std::sync::Arc;
/// use palisade_core::reload::Registry;
///
/// static STORES: Registry<String, Vec<u8>> = Registry::new();
/// let first = STORES.get_or_make("redis://a".into(), || Ok::<_, ()>(Arc::new(vec![1]))).unwrap();
/// let again = STORES.get_or_make("redis://a".into(), || Ok::<_, ()>(Arc::new(vec![2]))).unwrap();
/// assert!(Arc::ptr_eq(&first, &again), "the live one");
/// drop((first, again));
/// let anew = STORES.get_or_make("redis://a".into(), || Ok::<_, ()>(Arc::new(vec![3]))).unwrap();
/// assert_eq!(*anew, [3], "made anew once unused");
/// ```
pub struct Registry<K, T>(Mutex<Vec<(K, Weak<T>)>>);

impl<K: PartialEq, T> Registry<K, T> {
    /// An empty registry (`const`: for a `static`).
    #[must_use]
    pub const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// The live value of `key`, or the one `make` makes, then kept for
    /// `key` while it is used. `make` runs under the registry's lock: two
    /// callers never make two values for one key.
    ///
    /// # Errors
    /// `make`'s.
    pub fn get_or_make<E>(&self, key: K, make: impl FnOnce() -> Result<Arc<T>, E>) -> Result<Arc<T>, E> {
        let mut live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(value) = live
            .iter()
            .filter(|(k, _)| *k == key)
            .find_map(|(_, weak)| weak.upgrade())
        {
            return Ok(value);
        }
        let value = make()?;
        live.push((key, Arc::downgrade(&value)));
        Ok(value)
    }
}

impl<K: PartialEq, T> Default for Registry<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T> fmt::Debug for Registry<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Registry").field("values", &live.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::Decision;
    use crate::authn::OwnedRequest;
    use crate::authz::AccessPolicy;
    use crate::check::Check;
    use crate::policy::EMPTY_FILE;
    use crate::policy::Workload;

    /// `GET /open` is allowed by the file `open` and by no other.
    const OPEN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: default}
spec:
  rules: [{to: [{operation: {paths: [/open]}}]}]
";
    const CLOSED: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: closed, namespace: default}
spec:
  rules: [{to: [{operation: {paths: [/nothing]}}]}]
";

    fn build(set: &PolicySet) -> Result<Guard, PolicyError> {
        let policy = set.for_workload(&Workload::new("details", "default"));
        let access = AccessPolicy::compile_with(&policy, &crate::authz::ExternalAuthorizers::new())?;
        if policy
            .authorization_policies()
            .any(|(d, _)| d.metadata.name == "panics")
        {
            panic!("the application's builder fails");
        }
        Guard::builder()
            .access_policy(access)
            .build()
            .map_err(|e| PolicyError::new(set.source(), e.to_string()))
    }

    fn open(guard: &Guard) -> bool {
        matches!(
            guard.check(&OwnedRequest::get("/open")),
            Check::Ready(Decision::Allow(_))
        )
    }

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A guard built from a file holding `text`, and its reloader.
    fn started(tag: &str, text: &str) -> (Scratch, std::path::PathBuf, Guard, PolicyReloader) {
        let (dir, file) = scratch(tag);
        std::fs::write(&file, text).unwrap();
        let guard = build(&PolicySet::from_file(&file).unwrap()).unwrap();
        let reloader = PolicyReloader::new(&file, &guard, build);
        (dir, file, guard, reloader)
    }

    fn scratch(tag: &str) -> (Scratch, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("palisade-reload-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.yaml");
        (Scratch(dir), file)
    }

    /// A file the policy names (a client secret here) that changes is a
    /// change of the policy: loaded once two looks agree, as the file
    /// itself is.
    #[test]
    fn a_rotated_file_the_policy_names_is_loaded() {
        let (dir, file) = scratch("named");
        let secret = dir.0.join("client.secret");
        std::fs::write(&secret, "closed\n").unwrap();
        let text = format!(
            "{OPEN}---
apiVersion: palisade.dev/v1alpha1
kind: UpstreamCredentials
metadata: {{name: out, namespace: default}}
spec:
  hosts: [reviews]
  token: {{from: clientCredentials, issuer: https://kc.example/realms/r, clientId: details, clientSecretFile: {}}}
",
            secret.display()
        );
        std::fs::write(&file, &text).unwrap();
        // The application's guard follows the secret: "open" allows /open.
        let read = secret.clone();
        let build_from_secret = move |set: &PolicySet| {
            let said =
                std::fs::read_to_string(&read).map_err(|e| PolicyError::new(set.source(), e.to_string()))?;
            let text = if said.trim() == "open" { OPEN } else { CLOSED };
            build(&PolicySet::from_yaml_str(text, "test").unwrap())
        };
        let set = PolicySet::from_file(&file).unwrap();
        assert_eq!(set.files_named(), std::slice::from_ref(&secret));
        let guard = build_from_secret(&set).unwrap();
        // Rotated after the file was read, before the reloader was made.
        std::fs::write(&secret, "open\n").unwrap();
        let reloader = PolicyReloader::new(&file, &guard, build_from_secret.clone()).loaded_from(&set);
        assert!(!open(&guard));
        assert!(reloader.reload_if_changed().is_none(), "seen once");
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(open(&guard), "the rotated secret is in force");
        assert!(reloader.reload_if_changed().is_none(), "loaded once");
        // A file that does not load leaves the files it names watched.
        std::fs::write(&file, "kind: [").unwrap();
        reloader.reload_if_changed();
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
        // A file it names rotated while the contents do not load: tried
        // once, not at every look.
        std::fs::write(&secret, "rotated while broken\n").unwrap();
        reloader.reload_if_changed();
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
        assert!(reloader.reload_if_changed().is_none(), "not again");
        assert!(reloader.reload_if_changed().is_none(), "not again");
        std::fs::write(&file, &text).unwrap();
        reloader.reload_if_changed();
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        std::fs::write(&secret, "closed\n").unwrap();
        reloader.reload_if_changed();
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(!open(&guard));

        // A reloader made without `loaded_from` (as a first reading of the
        // docs would): the files the file names are watched from the start
        // too, not only from its first reload.
        let guard = build_from_secret(&PolicySet::from_file(&file).unwrap()).unwrap();
        let reloader = PolicyReloader::new(&file, &guard, build_from_secret);
        assert!(!open(&guard));
        assert!(reloader.reload_if_changed().is_none(), "as loaded");
        std::fs::write(&secret, "open\n").unwrap();
        reloader.reload_if_changed();
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(open(&guard), "the rotated secret is in force");
    }

    #[test]
    fn a_registry_value_is_shared_while_used_and_made_again_after() {
        let registry: Registry<&str, u32> = Registry::new();
        let made = std::cell::Cell::new(0);
        let make = |n| {
            made.set(made.get() + 1);
            Ok::<_, ()>(Arc::new(n))
        };
        let first = registry.get_or_make("a", || make(1)).unwrap();
        let again = registry.get_or_make("a", || make(2)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = registry.get_or_make("b", || make(3)).unwrap();
        assert_eq!((*other, made.get()), (3, 2));
        drop((first, again));
        assert_eq!(
            *registry.get_or_make("a", || make(4)).unwrap(),
            4,
            "made anew once unused"
        );
        assert_eq!(made.get(), 3);
        assert_eq!(registry.get_or_make("c", || Err::<Arc<u32>, _>(())), Err(()));
    }

    #[test]
    fn a_change_is_loaded_once_it_reads_the_same_twice() {
        let (_dir, file, guard, reloader) = started("settle", CLOSED);
        assert!(reloader.reload_if_changed().is_none(), "nothing changed");
        // Caught halfway through a rewrite: not loaded, though it is a valid
        // (allow-everything) file.
        std::fs::write(&file, "# being written\n").unwrap();
        assert!(reloader.reload_if_changed().is_none());
        std::fs::write(&file, OPEN).unwrap();
        assert!(reloader.reload_if_changed().is_none(), "seen once");
        assert!(!open(&guard));
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))), "seen twice");
        assert!(open(&guard));
        assert!(
            reloader.reload_if_changed().is_none(),
            "loaded: no change any more"
        );
    }

    #[test]
    fn an_emptied_file_is_kept_out_and_a_file_of_comments_is_no_policy() {
        let (_dir, file, guard, reloader) = started("empty", CLOSED);
        // Truncated by a writer that has not written yet: the policy in
        // force stays, whichever way the reload comes.
        for empty in ["", " \n\n"] {
            std::fs::write(&file, empty).unwrap();
            let err = reloader.reload().unwrap_err();
            assert!(err.to_string().contains("empty"), "{err}");
            assert!(reloader.reload_if_changed().is_none());
            assert!(reloader.reload_if_changed().is_none());
            assert!(!open(&guard), "{empty:?}");
        }
        // A stream of no documents, written so: no ALLOW policy, every
        // request allowed (said in a warning line), as at start-up.
        std::fs::write(&file, "# none\n").unwrap();
        reloader.reload().unwrap();
        assert!(open(&guard));
    }

    /// [`build`], refused as a file a document names is (with its I/O
    /// error) while `secret` is not there.
    fn needing(secret: &std::path::Path) -> impl Fn(&PolicySet) -> Result<Guard, PolicyError> + use<> {
        let secret = secret.to_owned();
        move |set: &PolicySet| {
            if !secret.exists() {
                return Err(PolicyError::new(set.source(), "cannot read the secret")
                    .with_source(std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
            build(set)
        }
    }

    /// What the contents say aloud (here: no document, every request
    /// allowed) is said once at warn level: a retry of the same contents
    /// says it at debug level, or it would repeat every 30 s.
    #[test]
    fn a_retry_does_not_warn_again_of_what_it_said() {
        if !palisade_testkit::in_a_process_of_its_own(
            "reload::tests::a_retry_does_not_warn_again_of_what_it_said",
        ) {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("warn");
        let warned = || lines.containing(EMPTY_FILE).len();
        let (dir, file) = scratch("warned");
        let secret = dir.0.join("secret");
        std::fs::write(&file, CLOSED).unwrap();
        let guard = build(&PolicySet::from_file(&file).unwrap()).unwrap();
        let reloader =
            PolicyReloader::new(&file, &guard, needing(&secret)).retrying_after(Duration::from_millis(100));
        tracing::subscriber::with_default(subscriber, || {
            std::fs::write(&file, "# no policy\n").unwrap();
            assert!(reloader.reload_if_changed().is_none(), "seen once");
            assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
            assert_eq!(warned(), 1, "said when first read");
            std::thread::sleep(Duration::from_millis(150));
            assert!(matches!(reloader.reload_if_changed(), Some(Err(_))), "again");
            std::fs::write(&secret, "s").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
            assert!(open(&guard));
            assert_eq!(warned(), 1, "not said again by the retries");
            // New contents are said again, though they warn alike.
            std::fs::write(&file, "# none at all\n").unwrap();
            reloader.reload().unwrap();
            assert_eq!(warned(), 2);
        });
    }

    /// [`needing`], with the secret read after the guard is built, so that
    /// each try says what the build says.
    fn needing_after_build(
        secret: &std::path::Path,
    ) -> impl Fn(&PolicySet) -> Result<Guard, PolicyError> + use<> {
        let secret = secret.to_owned();
        move |set: &PolicySet| {
            let guard = build(set)?;
            if !secret.exists() {
                return Err(PolicyError::new(set.source(), "cannot read the secret")
                    .with_source(std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
            Ok(guard)
        }
    }

    /// A reloader of `CLOSED`, built by `builder` of a secret not there
    /// yet, given contents whose build says its debug switch is on; a
    /// count of what was said of it at warn level while `tried` runs.
    fn explain_header_said<B>(
        tag: &str,
        builder: fn(&std::path::Path) -> B,
        tried: impl FnOnce(&PolicyReloader, &std::path::Path),
    ) -> usize
    where
        B: Fn(&PolicySet) -> Result<Guard, PolicyError> + Send + Sync + 'static,
    {
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("warn");
        let (dir, file) = scratch(tag);
        let secret = dir.0.join("secret");
        std::fs::write(&file, CLOSED).unwrap();
        let guard = build(&PolicySet::from_file(&file).unwrap()).unwrap();
        let reloader =
            PolicyReloader::new(&file, &guard, builder(&secret)).retrying_after(Duration::from_millis(100));
        let explained = format!(
            "{CLOSED}---\napiVersion: palisade.dev/v1alpha1\nkind: AuthorizationSettings\nmetadata: {{name: s, namespace: default}}\nspec: {{explainHeader: true}}\n"
        );
        tracing::subscriber::with_default(subscriber, || {
            std::fs::write(&file, &explained).unwrap();
            assert!(reloader.reload_if_changed().is_none(), "seen once");
            assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
            tried(&reloader, &secret);
        });
        lines.containing("explainHeader").len()
    }

    /// So is what a workload's configuration says of itself as it is built
    /// (here: a debug switch on), and a retry's own ways are put back.
    #[test]
    fn a_retry_does_not_warn_again_of_what_the_build_said() {
        if !palisade_testkit::in_a_process_of_its_own(
            "reload::tests::a_retry_does_not_warn_again_of_what_the_build_said",
        ) {
            return;
        }
        let warned = explain_header_said("built", needing_after_build, |reloader, secret| {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(150));
                assert!(matches!(reloader.reload_if_changed(), Some(Err(_))), "again");
            }
            std::fs::write(secret, "s").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
            for _ in 0..2 {
                assert!(crate::logging::first_said("outside a reload"), "put back");
            }
        });
        assert_eq!(warned, 1, "said once, by the first try");
    }

    /// What the first try did not reach (it failed before building the
    /// guard) is said at warn level by the retry that reaches it.
    #[test]
    fn a_retry_says_what_no_earlier_try_reached() {
        if !palisade_testkit::in_a_process_of_its_own(
            "reload::tests::a_retry_says_what_no_earlier_try_reached",
        ) {
            return;
        }
        let warned = explain_header_said("unreached", needing, |reloader, secret| {
            std::fs::write(secret, "s").unwrap();
            std::thread::sleep(Duration::from_millis(150));
            assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        });
        assert_eq!(warned, 1, "said by the try that built it");
    }

    #[test]
    fn contents_refused_for_a_file_they_name_are_loaded_again_until_it_is_there() {
        let (dir, file) = scratch("outside");
        let secret = dir.0.join("secret");
        let needs_secret = needing(&secret);
        std::fs::write(&secret, "s").unwrap();
        std::fs::write(&file, CLOSED).unwrap();
        let guard = needs_secret(&PolicySet::from_file(&file).unwrap()).unwrap();
        let reloader =
            PolicyReloader::new(&file, &guard, needs_secret).retrying_after(Duration::from_millis(100));
        // The new file lands before the secret it needs.
        std::fs::remove_file(&secret).unwrap();
        std::fs::write(&file, OPEN).unwrap();
        assert!(reloader.reload_if_changed().is_none(), "seen once");
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
        assert!(reloader.reload_if_changed().is_none(), "not before the pause");
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))), "again");
        std::fs::write(&secret, "s").unwrap();
        assert!(reloader.reload_if_changed().is_none(), "not before the pause");
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(open(&guard));
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            reloader.reload_if_changed().is_none(),
            "in force: nothing to retry"
        );
        // What the file's text alone refuses is not loaded again, whether
        // the loader refuses it or the application's function does.
        for refused in [
            OPEN.replace("rules:", "action: ALOW\n  rules:"),
            CLOSED.replace("name: closed", "name: panics"),
        ] {
            std::fs::write(&file, refused).unwrap();
            assert!(reloader.reload_if_changed().is_none(), "seen once");
            assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
            std::thread::sleep(Duration::from_millis(150));
            assert!(reloader.reload_if_changed().is_none());
        }
        // A refusal for want of a file, and the file cannot be read at the
        // next look: tried again once it can.
        std::fs::remove_file(&secret).unwrap();
        std::fs::write(&file, OPEN.replace("open", "reopened")).unwrap();
        assert!(reloader.reload_if_changed().is_none(), "seen once");
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
        std::fs::remove_file(&file).unwrap();
        assert!(reloader.reload().is_err(), "cannot read the file");
        std::fs::write(&secret, "s").unwrap();
        std::fs::write(&file, OPEN.replace("open", "reopened")).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            matches!(reloader.reload_if_changed(), Some(Ok(()))),
            "still pending"
        );
    }

    #[test]
    fn a_change_made_before_the_reloader_is_loaded_when_it_knows_what_was_loaded() {
        let (_dir, file) = scratch("window");
        std::fs::write(&file, CLOSED).unwrap();
        let set = PolicySet::from_file(&file).unwrap();
        let guard = build(&set).unwrap();
        // The file changes between start-up's read and the reloader.
        std::fs::write(&file, OPEN).unwrap();
        let unaware = PolicyReloader::new(&file, &guard, build);
        assert!(unaware.reload_if_changed().is_none());
        assert!(
            unaware.reload_if_changed().is_none(),
            "the change is taken as loaded"
        );
        let reloader = PolicyReloader::new(&file, &guard, build).loaded_from(&set);
        assert!(reloader.reload_if_changed().is_none(), "seen once");
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(open(&guard));
    }

    #[test]
    fn a_signal_during_a_write_loads_the_file_once_it_stays_the_same() {
        let (_dir, file, guard, reloader) = started("signal", CLOSED);
        // Never the same twice: refused.
        let mut i = 0;
        let err = reloader
            .settle(Duration::from_millis(1), 4, || {
                i += 1;
                Ok(format!("# {i}\n{OPEN}").into_bytes())
            })
            .unwrap_err();
        assert!(err.to_string().contains("still changing"), "{err}");
        assert_eq!(i, 4, "looked four times");
        assert!(!open(&guard));
        // Half written when the signal comes, whole 100 ms later.
        std::fs::write(&file, &OPEN[..40]).unwrap();
        let writer = {
            let file = file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&file, OPEN).unwrap();
            })
        };
        reloader.reload_settled(Duration::from_millis(300), 10).unwrap();
        writer.join().unwrap();
        assert!(open(&guard));
        // Missing at one look (an editor's save: the file renamed away, the
        // new one not yet written): the looks go on, and the file loads.
        let (_dir, _file, guard, reloader) = started("signal-missing", CLOSED);
        let mut reads = 0;
        reloader
            .settle(Duration::from_millis(1), 5, || {
                reads += 1;
                match reads {
                    2 => Err(std::io::ErrorKind::NotFound.into()),
                    _ => Ok(OPEN.as_bytes().to_vec()),
                }
            })
            .unwrap();
        assert!(open(&guard), "loaded after {reads} reads");
        // Missing at two looks in a row: refused as unreadable.
        let err = reloader
            .settle(Duration::from_millis(1), 5, || {
                Err(std::io::ErrorKind::NotFound.into())
            })
            .unwrap_err();
        assert!(open(&guard), "{err}: the policy in force stays");
    }

    /// A signal's reload, its contents settled, reads the file again once
    /// it holds the reload lock: contents another reload put in force
    /// meanwhile are not replaced by the older ones it read.
    #[test]
    fn a_signal_never_puts_back_contents_older_than_those_in_force() {
        let (_dir, _file, guard, reloader) = started("older", CLOSED);
        // Read twice the same (OPEN), then, under the lock, newer (CLOSED).
        let mut reads = [OPEN, OPEN, CLOSED, CLOSED, CLOSED].into_iter();
        reloader
            .settle(Duration::from_millis(1), 5, || {
                Ok(reads.next().unwrap_or(CLOSED).as_bytes().to_vec())
            })
            .unwrap();
        assert!(!open(&guard), "the older contents were put in force");
    }

    /// A file the watch cannot read (removed, not allowed) is no change for
    /// a moment (a rename replacing it), then said at error level, once a
    /// minute; the policy in force stays.
    #[test]
    fn a_file_that_stays_unreadable_is_said() {
        if !palisade_testkit::in_a_process_of_its_own("reload::tests::a_file_that_stays_unreadable_is_said") {
            return;
        }
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("warn");
        let said = || lines.containing("cannot be read").len();
        let (_dir, file, guard, reloader) = started("unreadable", OPEN);
        let reloader = reloader.unreadable_after(Duration::from_millis(50));
        tracing::subscriber::with_default(subscriber, || {
            std::fs::remove_file(&file).unwrap();
            assert!(reloader.reload_if_changed().is_none());
            assert_eq!(said(), 0, "a moment is no change");
            std::thread::sleep(Duration::from_millis(80));
            assert!(reloader.reload_if_changed().is_none());
            assert_eq!(said(), 1);
            assert!(reloader.reload_if_changed().is_none());
            assert_eq!(said(), 1, "once a minute");
            assert!(open(&guard), "the policy in force stays");
        });
    }

    /// The gauge of the last reload: 0 once the file cannot be read (one
    /// failure counted for the stretch), 1 again when it is back as it
    /// was; 0 after a refused file, 1 after one that loads. (A debugging
    /// recorder's snapshot reads each value and sets it to zero: each
    /// snapshot shows what was set since the last; `tests/operations.rs`
    /// reads the gauge as Prometheus keeps it.)
    #[test]
    fn the_last_reload_gauge_follows_refusals_and_an_unreadable_file() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // (gauge set since the last look, time set, failures counted)
        let look = || {
            let mut seen = (None, None, 0);
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                let key = key.key();
                match (key.name(), value) {
                    (CONFIG_LAST_RELOAD_OK, DebugValue::Gauge(v)) => seen.0 = Some(v.into_inner()),
                    (CONFIG_LAST_RELOAD_SUCCESS, DebugValue::Gauge(v)) => seen.1 = Some(v.into_inner()),
                    (CONFIG_RELOADS, DebugValue::Counter(n))
                        if key.labels().any(|l| l.value() == "failure") =>
                    {
                        seen.2 = n;
                    }
                    _ => {}
                }
            }
            seen
        };
        metrics::with_local_recorder(&recorder, || {
            let (_dir, file, _guard, reloader) = started("gauge", OPEN);
            let reloader = reloader.unreadable_after(Duration::from_millis(50));
            let (ok, at, failures) = look();
            assert_eq!(
                (ok, failures),
                (Some(1.0), 0),
                "the file it starts with is in force"
            );
            assert!(at.is_some_and(|t| t > 1.7e9), "{at:?}");
            std::fs::remove_file(&file).unwrap();
            assert!(reloader.reload_if_changed().is_none());
            assert_eq!(look().2, 0, "a moment is no change");
            std::thread::sleep(Duration::from_millis(80));
            // A sentinel: a look reads a gauge not set since as 0 too.
            metrics::gauge!(CONFIG_LAST_RELOAD_OK).set(42.0);
            assert!(reloader.reload_if_changed().is_none());
            assert!(reloader.reload_if_changed().is_none());
            assert_eq!(look(), (Some(0.0), Some(0.0), 1), "one failure for the stretch");
            std::fs::write(&file, OPEN).unwrap();
            assert!(reloader.reload_if_changed().is_none(), "no change");
            assert_eq!(look(), (Some(1.0), Some(0.0), 0), "back as it was, in force");
            // Refused while the file cannot be read (a reload asked for),
            // then back as it was: the contents in force, 1 again.
            std::fs::remove_file(&file).unwrap();
            metrics::gauge!(CONFIG_LAST_RELOAD_OK).set(42.0);
            reloader.reload().unwrap_err();
            assert_eq!(look().0, Some(0.0));
            std::fs::write(&file, OPEN).unwrap();
            assert!(reloader.reload_if_changed().is_none(), "no change");
            assert_eq!(look().0, Some(1.0));
            std::fs::write(&file, OPEN.replace("rules:", "action: ALOW\n  rules:")).unwrap();
            metrics::gauge!(CONFIG_LAST_RELOAD_OK).set(42.0);
            reloader.reload().unwrap_err();
            let (ok, _, failures) = look();
            assert_eq!((ok, failures), (Some(0.0), 1));
            std::fs::write(&file, CLOSED).unwrap();
            reloader.reload().unwrap();
            let (ok, at, failures) = look();
            assert_eq!((ok, failures), (Some(1.0), 0));
            assert!(at.is_some_and(|t| t > 1.7e9), "{at:?}");
        });
    }

    #[test]
    fn a_file_that_does_not_load_or_build_keeps_the_policy_in_force() {
        let (_dir, file, guard, reloader) = started("bad", OPEN);
        std::fs::write(&file, OPEN.replace("rules:", "action: ALOW\n  rules:")).unwrap();
        let err = reloader.reload().unwrap_err().to_string();
        assert!(
            err.contains("AuthorizationPolicy default/open") && err.contains("spec.action"),
            "{err}"
        );
        assert!(open(&guard));
        std::fs::write(&file, CLOSED.replace("name: closed", "name: panics")).unwrap();
        let err = reloader.reload().unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
        assert!(open(&guard));
        std::fs::write(&file, CLOSED).unwrap();
        reloader.reload().unwrap();
        assert!(!open(&guard));
    }
}
