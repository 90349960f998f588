//! What the Kerberos library's profile (`KRB5_CONFIG`'s files, else
//! `/etc/krb5.conf`, and what they include) says that Palisade must know:
//! whether the replay cache is off (with the environment, in the order MIT
//! reads them), and the clock skew the acceptor allows.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// MIT's profile when `KRB5_CONFIG` names none.
const DEFAULT_PROFILE: &str = "/etc/krb5.conf";
/// How deep `include` and `includedir` are followed.
const MAX_INCLUDE_DEPTH: usize = 8;

/// MIT's clock skew when the profile sets none (`clockskew`).
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Where the replay cache is turned off (`KRB5RCACHETYPE=none`,
/// `default_rcache_name = none: in FILE`), or `None`. `env` reads the
/// process environment.
pub(crate) fn replay_cache_off(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    // MIT: the cache's name from the environment, else its type from the
    // environment, else the profile's name.
    for var in ["KRB5RCACHENAME", "KRB5RCACHETYPE"] {
        if let Some(v) = env(var) {
            return is_none(&v).then(|| format!("{var}={v}"));
        }
    }
    let (value, file) = libdefault(env, "default_rcache_name")?;
    is_none(&value).then(|| format!("default_rcache_name = {value} in {}", file.display()))
}

/// MIT's `RCTMPDIR`, where the default replay cache is written when
/// neither `KRB5RCACHEDIR` nor `TMPDIR` names a directory.
const DEFAULT_RCACHE_DIR: &str = "/var/tmp";

/// The directory MIT's replay cache will be written in, with where its
/// place comes from: for the default cache (`dfl:`, MIT's `file2` cache
/// `krb5_EUID.rcache2`), `KRB5RCACHEDIR`, else `TMPDIR`, else `/var/tmp`
/// (MIT's `rc_dfl.c`); for a `file2:PATH` cache named in the environment
/// or the profile, `PATH`'s directory. `None` for a cache of another type
/// (MIT's type names are lower case: it refuses others at the first
/// ticket), one that is off ([`replay_cache_off`]), and a profile's name
/// with MIT's `%{…}` tokens, which it expands.
pub(crate) fn replay_cache_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<(PathBuf, String)> {
    let (name, named_by) = match (env("KRB5RCACHENAME"), env("KRB5RCACHETYPE")) {
        (Some(name), _) => (name, "KRB5RCACHENAME".to_owned()),
        (None, Some(kind)) => (format!("{kind}:"), "KRB5RCACHETYPE".to_owned()),
        (None, None) => match libdefault(env, "default_rcache_name") {
            Some((name, _)) if name.contains("%{") => return None,
            Some((name, file)) => (name, format!("default_rcache_name in {}", file.display())),
            None => ("dfl:".to_owned(), "MIT's default".to_owned()),
        },
    };
    let (kind, residual) = name.trim().split_once(':').unwrap_or((name.trim(), ""));
    match kind {
        "dfl" => Some(match (env("KRB5RCACHEDIR"), env("TMPDIR")) {
            (Some(dir), _) => (PathBuf::from(dir), "KRB5RCACHEDIR".to_owned()),
            (None, Some(dir)) => (PathBuf::from(dir), "TMPDIR, as KRB5RCACHEDIR is unset".to_owned()),
            (None, None) => (
                PathBuf::from(DEFAULT_RCACHE_DIR),
                "MIT's default, as KRB5RCACHEDIR and TMPDIR are unset".to_owned(),
            ),
        }),
        "file2" if !residual.is_empty() => {
            let dir = Path::new(residual)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())?;
            Some((dir.to_owned(), named_by))
        }
        _ => None,
    }
}

/// Whether a file can be made in `dir`: one of a name no other process
/// uses is made and removed.
pub(crate) fn writable(dir: &Path) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TRIES: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for _ in 0..3 {
        let probe = dir.join(format!(
            ".palisade-rcache-probe-{}-{nanos}-{}",
            std::process::id(),
            TRIES.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => return std::fs::remove_file(&probe),
            // Another's, left behind: another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no probe file could be made")))
}

/// The clock skew MIT's acceptor allows (`[libdefaults] clockskew`, in
/// seconds; 300 when unset or not a number, as MIT reads it), which it
/// adds to an accepted context's lifetime.
pub(crate) fn clock_skew(env: &dyn Fn(&str) -> Option<String>) -> Duration {
    libdefault_value(env, "clockskew")
        .and_then(|value| value.parse().ok())
        .map_or(DEFAULT_CLOCK_SKEW, Duration::from_secs)
}

/// The first value of the `[libdefaults]` relation `tag` in the profile's
/// files.
pub(crate) fn libdefault_value(env: &dyn Fn(&str) -> Option<String>, tag: &str) -> Option<String> {
    libdefault(env, tag).map(|(value, _)| value)
}

/// The first value of the `[libdefaults]` relation `tag` in the profile's
/// files, with the file it is in.
fn libdefault(env: &dyn Fn(&str) -> Option<String>, tag: &str) -> Option<(String, PathBuf)> {
    env("KRB5_CONFIG")
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned())
        .split(':')
        .filter(|f| !f.is_empty())
        .find_map(|f| in_profile(Path::new(f), tag, 0))
}

fn is_none(name: &str) -> bool {
    name.trim().to_ascii_lowercase().starts_with("none")
}

/// The value of the `[libdefaults]` relation `tag` in the profile file
/// `file` (and the files it includes), with the file it is in. A file that
/// cannot be read is one the library cannot read either.
fn in_profile(file: &Path, tag: &str, depth: usize) -> Option<(String, PathBuf)> {
    if depth > MAX_INCLUDE_DEPTH {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let mut libdefaults = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(path) = line.strip_prefix("includedir ") {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path.trim())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                // As MIT: names of letters, digits, `-` and `_`, or ending in `.conf`.
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.ends_with(".conf")
                            || n.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    })
                })
                .collect();
            entries.sort();
            if let Some(found) = entries.iter().find_map(|p| in_profile(p, tag, depth + 1)) {
                return Some(found);
            }
            continue;
        }
        if let Some(path) = line.strip_prefix("include ") {
            if let Some(found) = in_profile(Path::new(path.trim()), tag, depth + 1) {
                return Some(found);
            }
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            libdefaults = section.trim_end_matches(']').trim() == "libdefaults";
            continue;
        }
        if !libdefaults {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        // `name*` marks a relation final.
        if name.trim().trim_end_matches('*').trim() == tag {
            return Some((value.trim().to_owned(), file.to_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replay cache turned off, as MIT reads it: the environment's
    /// name, then its type, then the profile's name (through `include`).
    #[test]
    fn a_replay_cache_turned_off_anywhere_mit_looks_is_found() {
        let dir = std::env::temp_dir().join(format!("palisade-rcache-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let main = dir.join("krb5.conf");
        let off = dir.join("conf.d").join("rcache.conf");
        std::fs::write(&off, "[libdefaults]\n  default_rcache_name = none:\n").unwrap();
        let profile = |text: &str| {
            std::fs::write(&main, text).unwrap();
            main.display().to_string()
        };
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let on =
            profile("[libdefaults]\n default_realm = EXAMPLE.TEST\n[realms]\n default_rcache_name = none:\n");
        assert_eq!(replay_cache_off(&env(vec![("KRB5_CONFIG", on.clone())])), None);
        let off_here = profile("# a comment\n[libdefaults]\n\tdefault_rcache_name* = none:\n");
        let found =
            replay_cache_off(&env(vec![("KRB5_CONFIG", format!("/nonexistent:{off_here}"))])).unwrap();
        assert!(found.contains("none:") && found.contains("krb5.conf"), "{found}");
        // The environment's cache wins over the profile, as in MIT.
        let named = env(vec![
            ("KRB5_CONFIG", off_here.clone()),
            ("KRB5RCACHENAME", "file2:/var/tmp/rc".into()),
        ]);
        assert_eq!(replay_cache_off(&named), None);
        let typed = env(vec![("KRB5RCACHETYPE", "none".into())]);
        assert_eq!(replay_cache_off(&typed).as_deref(), Some("KRB5RCACHETYPE=none"));
        for include in [
            format!("include {}\n", off.display()),
            format!("includedir {}\n", dir.join("conf.d").display()),
        ] {
            let with = profile(&format!(
                "{include}[libdefaults]\n default_realm = EXAMPLE.TEST\n"
            ));
            let found = replay_cache_off(&env(vec![("KRB5_CONFIG", with)])).unwrap();
            assert!(found.contains("rcache.conf"), "{found}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where MIT writes its replay cache, as it resolves the cache's name:
    /// the default cache in `KRB5RCACHEDIR` (else `TMPDIR`, else `/var/tmp`), a `file2:`
    /// cache in its file's directory, from the environment or the
    /// profile; no directory for another type. A directory that does not
    /// exist cannot be written in; one that does, can.
    #[test]
    fn the_replay_caches_directory_is_found_as_mit_resolves_it() {
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let none = "/nonexistent-palisade-profile".to_owned();
        let at = |vars: Vec<(&'static str, String)>| {
            let mut vars = vars;
            vars.push(("KRB5_CONFIG", none.clone()));
            replay_cache_dir(&env(vars)).map(|(d, from)| (d.display().to_string(), from))
        };
        assert_eq!(at(vec![]).map(|(d, _)| d).as_deref(), Some("/var/tmp"));
        assert_eq!(
            at(vec![("TMPDIR", "/srv/tmp".into())]).map(|(d, _)| d).as_deref(),
            Some("/srv/tmp"),
            "MIT's order: KRB5RCACHEDIR, TMPDIR, /var/tmp"
        );
        assert_eq!(
            at(vec![
                ("TMPDIR", "/srv/tmp".into()),
                ("KRB5RCACHEDIR", "/srv/rc".into())
            ])
            .map(|(d, _)| d)
            .as_deref(),
            Some("/srv/rc")
        );
        assert_eq!(
            at(vec![("KRB5RCACHETYPE", "DFL".into())]),
            None,
            "not a type MIT knows"
        );
        assert_eq!(
            at(vec![("KRB5RCACHEDIR", "/srv/rc".into())]),
            Some(("/srv/rc".to_owned(), "KRB5RCACHEDIR".to_owned()))
        );
        assert_eq!(
            at(vec![("KRB5RCACHENAME", "file2:/srv/rc/web.rcache2".into())]),
            Some(("/srv/rc".to_owned(), "KRB5RCACHENAME".to_owned()))
        );
        assert_eq!(
            at(vec![
                ("KRB5RCACHETYPE", "dfl".into()),
                ("KRB5RCACHEDIR", "/srv/x".into())
            ])
            .map(|(d, _)| d),
            Some("/srv/x".to_owned())
        );
        assert_eq!(at(vec![("KRB5RCACHETYPE", "memory".into())]), None);
        let dir = std::env::temp_dir().join(format!("palisade-rcdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("krb5.conf");
        std::fs::write(&conf, "[libdefaults]\n default_rcache_name = file2:/srv/p/rc\n").unwrap();
        let tokens = dir.join("tokens.conf");
        std::fs::write(
            &tokens,
            "[libdefaults]\n default_rcache_name = file2:%{TEMP}/rc\n",
        )
        .unwrap();
        assert_eq!(
            replay_cache_dir(&env(vec![("KRB5_CONFIG", tokens.display().to_string())])),
            None,
            "MIT expands %{{TEMP}}"
        );
        std::fs::remove_file(&tokens).unwrap();
        let from_profile = replay_cache_dir(&env(vec![("KRB5_CONFIG", conf.display().to_string())])).unwrap();
        assert_eq!(from_profile.0, Path::new("/srv/p"));
        assert!(from_profile.1.contains("krb5.conf"), "{}", from_profile.1);
        assert!(writable(&dir).is_ok());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "the probe is removed"
        );
        assert!(writable(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The acceptor's clock skew is the profile's `clockskew`, 300 s
    /// without one.
    #[test]
    fn the_clock_skew_is_the_profiles() {
        let dir = std::env::temp_dir().join(format!("palisade-clockskew-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let skew = |text: &str| {
            let file = dir.join("krb5.conf");
            std::fs::write(&file, text).unwrap();
            let path = file.display().to_string();
            clock_skew(&move |name: &str| (name == "KRB5_CONFIG").then(|| path.clone()))
        };
        assert_eq!(
            skew("[libdefaults]\n clockskew = 900\n"),
            Duration::from_secs(900)
        );
        assert_eq!(
            skew("[libdefaults]\n default_realm = EXAMPLE.TEST\n"),
            DEFAULT_CLOCK_SKEW
        );
        assert_eq!(skew("[realms]\n clockskew = 900\n"), DEFAULT_CLOCK_SKEW);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
