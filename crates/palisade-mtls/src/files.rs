//! What the server and the client side share: reading PEM files, and
//! reloading when they change (a file watch by polling, SIGHUP, or a call).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::server::{LOG_TARGET, TlsError};

pub(crate) fn chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError::new(path, format!("cannot read the certificates: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::new(path, "no certificate in the file"));
    }
    Ok(chain)
}

pub(crate) fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = chain(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::new(key, format!("cannot read the private key: {e}")))?;
    CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| TlsError::new(key, format!("the key does not fit the certificate: {e}")))
}

pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in chain(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError::new(path, format!("not a usable trust anchor: {e}")))?;
    }
    Ok(roots)
}

/// Puts freshly loaded material in use, or keeps the old one and logs one
/// error naming the bad file: the one reload policy of the server and the
/// client side.
pub(crate) fn install<T>(
    slot: &arc_swap::ArcSwap<T>,
    loaded: Result<T, TlsError>,
    cert: &Path,
    what: &str,
) -> Result<(), TlsError> {
    match loaded {
        Ok(m) => {
            slot.store(std::sync::Arc::new(m));
            tracing::info!(target: LOG_TARGET, cert = %cert.display(), "{what} reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(target: LOG_TARGET, error = %e, "new {what} refused; the previous stays in use");
            Err(e)
        }
    }
}

/// Each file's modification time and size.
pub(crate) type Stamp = Vec<Option<(SystemTime, u64)>>;

/// Something whose material comes from files and can be read again.
pub(crate) trait Reload: Clone + Send + Sync + 'static {
    /// The files, in a fixed order.
    fn paths(&self) -> Vec<PathBuf>;
    /// Reads them again; on error the old material stays.
    fn reload(&self) -> Result<(), TlsError>;
    /// The last stamp seen.
    fn last_stamp(&self) -> &Mutex<Option<Stamp>>;
}

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Reloads when a file's modification time or size changed since the last
/// look; `true` when new material is in use.
pub(crate) fn reload_if_changed<R: Reload>(r: &R) -> bool {
    let now = stamp(&r.paths());
    let mut last = r.last_stamp().lock().unwrap_or_else(PoisonError::into_inner);
    match last.as_ref() {
        None => {
            *last = Some(now);
            false
        }
        Some(prev) if *prev == now => false,
        Some(_) => {
            *last = Some(now);
            drop(last);
            r.reload().is_ok()
        }
    }
}

pub(crate) fn watch<R: Reload>(r: &R, interval: Duration) {
    watch_all(vec![r.clone()], interval);
}

/// Watches every one of `all` from one thread, which lives as long as the
/// process (nothing when `all` is empty).
pub(crate) fn watch_all<R: Reload>(all: Vec<R>, interval: Duration) {
    if all.is_empty() {
        return;
    }
    for r in &all {
        reload_if_changed(r);
    }
    let spawned = std::thread::Builder::new()
        .name("palisade-tls-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                for r in &all {
                    reload_if_changed(r);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(target: LOG_TARGET, error = %e, "cannot start the TLS file watcher; reload with SIGHUP or reload()");
    }
}

pub(crate) fn reload_on_sighup<R: Reload>(r: &R) -> std::io::Result<()> {
    reload_all_on_sighup(vec![r.clone()])
}

/// Reloads every one of `all` on `SIGHUP`, from one task on the current
/// tokio runtime (nothing when `all` is empty).
pub(crate) fn reload_all_on_sighup<R: Reload>(all: Vec<R>) -> std::io::Result<()> {
    if all.is_empty() {
        return Ok(());
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let all = std::sync::Arc::new(all);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Reading files and parsing keys are blocking work.
            let reloaders = all.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for r in reloaders.iter() {
                    let _ = r.reload();
                }
            })
            .await;
        }
    });
    Ok(())
}
