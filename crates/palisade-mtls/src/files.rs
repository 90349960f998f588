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
        .map_err(|e| TlsError::reading(path, format!("cannot read the certificates: {e}"), e))?;
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
        .map_err(|e| TlsError::reading(key, format!("cannot read the private key: {e}"), e))?;
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

/// How often the watch tries again files whose reload was refused and
/// that have not changed since (a `chmod` that makes one readable leaves
/// its stamp as it was).
const RETRY_REFUSED: Duration = Duration::from_secs(60);

/// What the files looked like when read: the stamp of the material in use
/// (taken before its files were read), and that of a reload refused, with
/// when to try them again.
#[derive(Debug, Default)]
pub(crate) struct Stamps {
    in_use: Option<Stamp>,
    refused: Option<(Stamp, std::time::Instant)>,
}

impl Stamps {
    /// The stamps of material just built from files whose stamp was `in_use`.
    pub(crate) fn built(in_use: Stamp) -> Self {
        Self {
            in_use: Some(in_use),
            refused: None,
        }
    }
}

/// Something whose material comes from files and can be read again.
pub(crate) trait Reload: Clone + Send + Sync + 'static {
    /// The files, in a fixed order.
    fn paths(&self) -> Vec<PathBuf>;
    /// Reads them again and puts them in use; on error the old material
    /// stays. Only through [`reload`] (one reload at a time).
    fn read_again(&self) -> Result<(), TlsError>;
    /// The stamps seen.
    fn last_stamp(&self) -> &Mutex<Stamps>;
    /// Whether anything but the watch that holds this clone still uses the
    /// material: when nothing does, its watch ends.
    fn in_use_elsewhere(&self) -> bool {
        true
    }
}

/// The files' stamp now: taken when material is built, before its files
/// are read, so that a change made while they are read, or before the
/// watch's first look, is loaded by it.
pub(crate) fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Reads `r`'s files again and puts them in use, one reload of `r` at a
/// time whoever asks (the watch, `SIGHUP`, a call). The files' stamp taken
/// before they are read becomes the last one seen: a reload that read older
/// files than the watch last put in use (a `SIGHUP` that began before they
/// were replaced) leaves the watch a stamp that differs from the files', so
/// it loads the newer ones again rather than keeping the older.
pub(crate) fn reload<R: Reload>(r: &R) -> Result<(), TlsError> {
    let mut last = r.last_stamp().lock().unwrap_or_else(PoisonError::into_inner);
    let now = stamp(&r.paths());
    let read = r.read_again();
    settle(&mut last, now, read.is_ok());
    read
}

/// Records a reload of files stamped `now`: in use, or refused now.
fn settle(last: &mut Stamps, now: Stamp, loaded: bool) {
    if loaded {
        *last = Stamps::built(now);
    } else {
        last.refused = Some((now, std::time::Instant::now() + RETRY_REFUSED));
    }
}

/// Reloads when a file's modification time or size changed since the
/// material in use was read; `true` when new material is in use. A reload
/// that fails (a file unreadable now, half written) is tried again when
/// the files change, and once a minute if they do not (a `chmod` leaves
/// their stamp as it is).
pub(crate) fn reload_if_changed<R: Reload>(r: &R) -> bool {
    let mut last = r.last_stamp().lock().unwrap_or_else(PoisonError::into_inner);
    let now = stamp(&r.paths());
    if last.in_use.as_ref() == Some(&now) {
        return false;
    }
    // Refused as they are now: tried again once a minute (each refusal
    // is an error line).
    if last
        .refused
        .as_ref()
        .is_some_and(|(refused, retry)| *refused == now && std::time::Instant::now() < *retry)
    {
        return false;
    }
    let loaded = r.read_again().is_ok();
    settle(&mut last, now, loaded);
    loaded
}

pub(crate) fn watch<R: Reload>(r: &R, interval: Duration) {
    let _detached = watch_all(vec![r.clone()], interval);
}

/// Watches every one of `all` from one thread, until none of them is in
/// use elsewhere ([`Reload::in_use_elsewhere`]): a configuration replaced
/// (a reloaded `DestinationRule`) stops being watched once its last
/// connection is gone. Nothing when `all` is empty.
pub(crate) fn watch_all<R: Reload>(all: Vec<R>, interval: Duration) -> Option<std::thread::JoinHandle<()>> {
    if all.is_empty() {
        return None;
    }
    for r in &all {
        reload_if_changed(r);
    }
    let spawned = std::thread::Builder::new()
        .name("palisade-tls-watch".into())
        .spawn(move || {
            let mut all = all;
            loop {
                std::thread::sleep(interval);
                all.retain(Reload::in_use_elsewhere);
                if all.is_empty() {
                    return;
                }
                for r in &all {
                    reload_if_changed(r);
                }
            }
        });
    spawned
        .inspect_err(|e| {
            tracing::error!(target: LOG_TARGET, error = %e, "cannot start the TLS file watcher; reload with SIGHUP or reload()");
        })
        .ok()
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
                    let _ = reload(r);
                }
            })
            .await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};

    use super::*;

    /// Material read from one file: the first read waits to be told to go
    /// on (a slow reload, begun before the file is replaced).
    #[derive(Clone)]
    struct Slow {
        file: PathBuf,
        in_use: Arc<Mutex<String>>,
        stamp: Arc<Mutex<Stamps>>,
        first: Arc<AtomicBool>,
        read: mpsc::SyncSender<()>,
        go: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl Reload for Slow {
        fn paths(&self) -> Vec<PathBuf> {
            vec![self.file.clone()]
        }

        fn read_again(&self) -> Result<(), TlsError> {
            let text = std::fs::read_to_string(&self.file).unwrap();
            if self.first.swap(false, Ordering::SeqCst) {
                self.read.send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
            *self.in_use.lock().unwrap() = text;
            Ok(())
        }

        fn last_stamp(&self) -> &Mutex<Stamps> {
            &self.stamp
        }
    }

    /// Material that fails to load while `broken` is set.
    #[derive(Clone)]
    struct Flaky {
        file: PathBuf,
        broken: Arc<AtomicBool>,
        reads: Arc<std::sync::atomic::AtomicUsize>,
        stamp: Arc<Mutex<Stamps>>,
    }

    impl Flaky {
        /// Material of the file `name`, written "built" in a directory of
        /// its own for `tag`: the directory, the file and the material.
        fn built(tag: &str, name: &str) -> (PathBuf, PathBuf, Self) {
            let dir = std::env::temp_dir().join(format!("palisade-files-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(name);
            std::fs::write(&file, "built").unwrap();
            let r = Self {
                file: file.clone(),
                broken: Arc::new(AtomicBool::new(false)),
                reads: Arc::default(),
                stamp: Arc::new(Mutex::new(Stamps::built(stamp(std::slice::from_ref(&file))))),
            };
            (dir, file, r)
        }
    }

    impl Reload for Flaky {
        fn paths(&self) -> Vec<PathBuf> {
            vec![self.file.clone()]
        }

        fn read_again(&self) -> Result<(), TlsError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.broken.load(Ordering::SeqCst) {
                return Err(TlsError::new(&self.file, "unreadable"));
            }
            Ok(())
        }

        fn last_stamp(&self) -> &Mutex<Stamps> {
            &self.stamp
        }

        fn in_use_elsewhere(&self) -> bool {
            Arc::strong_count(&self.broken) > 1
        }
    }

    /// Files changed after the material was built, before the watch's first
    /// look, are loaded at that look; a refused reload is tried again when
    /// the files change, and once a minute when they do not (a `chmod`
    /// that makes a file readable changes no stamp).
    #[test]
    fn changes_before_the_first_look_load_and_a_refused_reload_is_tried_again() {
        let (dir, file, r) = Flaky::built("retry", "crl.pem");
        assert!(!reload_if_changed(&r), "unchanged since it was built");
        std::fs::write(&file, "rotated before the first look").unwrap();
        assert!(reload_if_changed(&r), "loaded at the first look");
        // Written now unreadable: refused, then not read at every look.
        r.broken.store(true, Ordering::SeqCst);
        std::fs::write(&file, "a new CRL, unreadable").unwrap();
        assert!(!reload_if_changed(&r));
        let reads = r.reads.load(Ordering::SeqCst);
        assert!(!reload_if_changed(&r));
        assert_eq!(r.reads.load(Ordering::SeqCst), reads, "not read again at once");
        // Made readable in place: loaded at the next try, a minute on.
        r.broken.store(false, Ordering::SeqCst);
        if let Some((_, retry)) = &mut r.stamp.lock().unwrap().refused {
            *retry = std::time::Instant::now();
        }
        assert!(reload_if_changed(&r), "tried again and loaded");
        assert!(!reload_if_changed(&r), "in use now");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A watch ends once nothing else uses what it watches.
    #[test]
    fn a_watch_ends_when_its_material_is_no_longer_used() {
        let (dir, file, r) = Flaky::built("unused", "cert.pem");
        let watch = watch_all(vec![r.clone()], Duration::from_millis(10)).unwrap();
        // In use (this clone lives): the watch reads a change.
        std::fs::write(&file, "rotated, longer").unwrap();
        while r.reads.load(Ordering::SeqCst) == 0 {
            assert!(!watch.is_finished(), "ended while in use");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(r);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !watch.is_finished() {
            assert!(std::time::Instant::now() < deadline, "still watching");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_slow_reload_of_older_files_does_not_outlast_the_newer_ones() {
        let dir = std::env::temp_dir().join(format!("palisade-files-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cert.pem");
        std::fs::write(&file, "old").unwrap();
        let (read, was_read) = mpsc::sync_channel(1);
        let (go_on, go) = mpsc::channel();
        let r = Slow {
            file: file.clone(),
            in_use: Arc::new(Mutex::new(String::new())),
            stamp: Arc::new(Mutex::new(Stamps::built(stamp(std::slice::from_ref(&file))))),
            first: Arc::new(AtomicBool::new(true)),
            read,
            go: Arc::new(Mutex::new(go)),
        };
        assert!(!reload_if_changed(&r), "nothing changed since it was built");
        // A SIGHUP's reload reads the old file and is slow to put it in use.
        let signal = std::thread::spawn({
            let r = r.clone();
            move || reload(&r)
        });
        was_read.recv().unwrap();
        // Replaced meanwhile (another size: another stamp), and the watch
        // looks.
        std::fs::write(&file, "new material").unwrap();
        let watch = std::thread::spawn({
            let r = r.clone();
            move || reload_if_changed(&r)
        });
        // The watch's look comes before the slow reload ends (unless one
        // waits for the other): the order in which the older files won.
        std::thread::sleep(Duration::from_millis(200));
        go_on.send(()).unwrap();
        signal.join().unwrap().unwrap();
        watch.join().unwrap();
        // Whichever finished last, the watch has the newer file in use, or
        // sees at its next look that it must read it.
        reload_if_changed(&r);
        assert_eq!(*r.in_use.lock().unwrap(), "new material");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
