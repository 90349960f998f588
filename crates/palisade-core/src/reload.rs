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
//!
//! It reloads when told ([`PolicyReloader::reload`]), when the file's
//! contents change ([`PolicyReloader::watch`]) and on `SIGHUP`
//! ([`PolicyReloader::reload_on_sighup`]). Every attempt is counted in
//! [`CONFIG_RELOADS`](crate::metrics::CONFIG_RELOADS).
//!
//! ```
//! use palisade_core::policy::{PolicySet, Workload};
//! use palisade_core::reload::PolicyReloader;
//! use palisade_core::Guard;
//! # let dir = std::env::temp_dir().join(format!("palisade-reload-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("policy.yaml");
//! std::fs::write(&path, "")?;
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::guard::{Guard, LOG_TARGET};
use crate::metrics::CONFIG_RELOADS;
use crate::policy::{PolicyError, PolicySet};

type Build = dyn Fn(&PolicySet) -> Result<Guard, PolicyError> + Send + Sync;

struct Inner {
    path: PathBuf,
    guard: Guard,
    build: Box<Build>,
    /// The contents last loaded (or refused): a change is a difference.
    last: Mutex<Option<Vec<u8>>>,
    /// One reload at a time, so a slow build never overtakes a later one.
    running: Mutex<()>,
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
    /// `guard` with). The file as it is now counts as loaded.
    pub fn new(
        path: impl AsRef<Path>,
        guard: &Guard,
        build: impl Fn(&PolicySet) -> Result<Guard, PolicyError> + Send + Sync + 'static,
    ) -> Self {
        let path = path.as_ref().to_path_buf();
        let last = std::fs::read(&path).ok();
        Self(Arc::new(Inner {
            path,
            guard: guard.clone(),
            build: Box::new(build),
            last: Mutex::new(last),
            running: Mutex::new(()),
        }))
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
    /// be used; the policy in force stays, and the error is logged.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let _one_at_a_time = self.0.running.lock().unwrap_or_else(PoisonError::into_inner);
        let contents = std::fs::read(&self.0.path);
        if let Ok(c) = &contents {
            *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        }
        let name = self.0.path.display().to_string();
        let loaded = contents
            .map_err(|e| PolicyError::new(&name, format!("cannot read: {e}")))
            .and_then(|c| {
                let text = String::from_utf8(c).map_err(|_| PolicyError::new(&name, "not UTF-8 text"))?;
                PolicySet::from_yaml_str(&text, &name)
            })
            .and_then(|set| (self.0.build)(&set));
        match loaded {
            Ok(guard) => {
                self.0.guard.replace(guard);
                metrics::counter!(CONFIG_RELOADS, "result" => "success").increment(1);
                tracing::info!(target: LOG_TARGET, file = %self.0.path.display(), "policy reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!(CONFIG_RELOADS, "result" => "failure").increment(1);
                tracing::error!(target: LOG_TARGET, error = %e, "policy not reloaded; the previous one stays in force");
                Err(e)
            }
        }
    }

    /// Reloads if the file's contents differ from those last loaded (or
    /// refused); `None` when they do not.
    ///
    /// # Errors
    /// As [`PolicyReloader::reload`].
    pub fn reload_if_changed(&self) -> Option<Result<(), PolicyError>> {
        // A file being replaced may be missing for a moment: not a change.
        let now = std::fs::read(&self.0.path).ok()?;
        let changed = self
            .0
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|last| *last != now);
        changed.then(|| self.reload())
    }

    /// Looks at the file every `interval` on a background thread and
    /// reloads when its contents changed; the thread ends when the last
    /// clone of this reloader is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn watch(&self, interval: Duration) -> std::io::Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        std::thread::Builder::new()
            .name("palisade-policy-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    let _ = PolicyReloader(inner).reload_if_changed();
                }
            })?;
        Ok(())
    }

    /// Reloads on every `SIGHUP`, from a task on the current tokio runtime.
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
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
        Ok(())
    }
}
