//! What the acceptor's keytab holds, as `klist -kte` shows it: each
//! principal with its newest key version and that version's encryption
//! types, for the line [`crate::SpnegoAuthenticatorBuilder::build`] says at
//! start-up (what an administrator checks first when tickets are
//! refused). Never a key: the key blocks are skipped unread.
//!
//! MIT's file keytab, version 2 (`0x0502`, what `ktadd`, `ktutil`,
//! `ktpass` and `msktutil` write): big-endian; entries each preceded by a
//! signed 32-bit length (a negative one is a hole); an entry is the
//! component count, the realm and components as 16-bit-length strings, the
//! name type, a timestamp, an 8-bit key version, the key (type, then a
//! 16-bit-length value) and, when the entry has room, a 32-bit key version
//! that replaces the 8-bit one when it is not zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most entries read: a keytab of a host holds tens.
const MAX_ENTRIES: usize = 4096;

/// The most of the file read.
const MAX_BYTES: u64 = 1 << 20;

/// A principal's newest key version in the keytab, and the encryption
/// types of that version's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) kvno: u32,
    pub(crate) enctypes: Vec<i32>,
}

/// The keytab's file as MIT finds it for the acceptor: `KRB5_KTNAME` (a
/// `FILE:` or `WRFILE:` name, or a path), else the profile's
/// `default_keytab_name`, else `/etc/krb5.keytab`. `None` for a keytab of
/// another type (`MEMORY:`, `KEYRING:`).
pub(crate) fn acceptor_keytab(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let name = env("KRB5_KTNAME")
        .or_else(|| crate::profile::libdefault_value(env, "default_keytab_name"))
        .unwrap_or_else(|| "FILE:/etc/krb5.keytab".to_owned());
    let path = match name.split_once(':') {
        Some(("FILE" | "WRFILE", path)) => path,
        Some(_) if !name.starts_with('/') => return None,
        _ => &name,
    };
    (!path.contains("%{")).then(|| PathBuf::from(path))
}

/// Each principal of the keytab at `path` (`HTTP/web@REALM`) with its
/// newest key version's encryption types; `None` for a file that cannot
/// be read or is not a version 2 keytab.
pub(crate) fn principals(path: &Path) -> Option<BTreeMap<String, Keys>> {
    use std::io::Read as _;
    // A regular file, and no more of it than a keytab could be: not a FIFO
    // or a device that never ends.
    let file = std::fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Option<BTreeMap<String, Keys>> {
    let mut r = Reader(bytes);
    if r.take(2)? != [0x05, 0x02] {
        return None;
    }
    let mut all: BTreeMap<String, Keys> = BTreeMap::new();
    for _ in 0..MAX_ENTRIES {
        let Some(size) = r.i32() else { break };
        let Ok(len) = usize::try_from(size.unsigned_abs()) else {
            break;
        };
        let Some(entry) = r.take(len) else { break };
        // Zero: the end, as MIT reads it; below: a hole.
        if size == 0 {
            break;
        }
        if size < 0 {
            continue;
        }
        if let Some((principal, kvno, enctype)) = entry_of(entry) {
            let keys = all.entry(principal).or_insert(Keys {
                kvno,
                enctypes: Vec::new(),
            });
            if kvno > keys.kvno {
                *keys = Keys {
                    kvno,
                    enctypes: Vec::new(),
                };
            }
            if kvno == keys.kvno && !keys.enctypes.contains(&enctype) {
                keys.enctypes.push(enctype);
            }
        }
    }
    Some(all)
}

/// One entry: the principal, its key version and the key's type.
fn entry_of(entry: &[u8]) -> Option<(String, u32, i32)> {
    let mut r = Reader(entry);
    let components = r.u16()?;
    let realm = r.string()?;
    let mut names = Vec::with_capacity(usize::from(components));
    for _ in 0..components {
        names.push(r.string()?);
    }
    let _name_type = r.u32()?;
    let _timestamp = r.u32()?;
    let vno8 = r.take(1)?[0];
    let enctype = i32::from(i16::from_be_bytes(r.take(2)?.try_into().ok()?));
    let key_len = r.u16()?;
    r.take(usize::from(key_len))?;
    let kvno = match r.u32() {
        Some(v) if v != 0 => v,
        _ => u32::from(vno8),
    };
    Some((format!("{}@{realm}", names.join("/")), kvno, enctype))
}

/// MIT's name of an encryption type, or its number.
pub(crate) fn enctype_name(enctype: i32) -> String {
    match enctype {
        1 => "des-cbc-crc".into(),
        3 => "des-cbc-md5".into(),
        16 => "des3-cbc-sha1".into(),
        17 => "aes128-cts-hmac-sha1-96".into(),
        18 => "aes256-cts-hmac-sha1-96".into(),
        19 => "aes128-cts-hmac-sha256-128".into(),
        20 => "aes256-cts-hmac-sha384-192".into(),
        23 => "arcfour-hmac".into(),
        24 => "arcfour-hmac-exp".into(),
        25 => "camellia128-cts-cmac".into(),
        26 => "camellia256-cts-cmac".into(),
        other => format!("enctype {other}"),
    }
}

/// Whether every one of `enctypes` is one Active Directory and MIT have
/// deprecated (DES, triple DES, RC4): such keys decrypt only tickets of
/// those types, which current KDCs issue only when told to.
pub(crate) fn weak_only(enctypes: &[i32]) -> bool {
    !enctypes.is_empty() && enctypes.iter().all(|e| matches!(e, 1 | 3 | 16 | 23 | 24))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u16()?;
        Some(String::from_utf8_lossy(self.take(usize::from(len))?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keytab MIT's `kadmin` wrote, read as `klist -kte` shows it: the
    /// principal, its newest key version (a re-key writes a second set of
    /// entries) and that version's encryption types; the keys themselves
    /// never leave the reader. Where MIT finds the file.
    #[test]
    fn a_keytab_mit_wrote_is_read_as_klist_shows_it() {
        let realm = palisade_testkit::KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
        let keytab = realm.add_service("HTTP/web.example.test").unwrap();
        let first = principals(&keytab).expect("a version 2 keytab");
        let web = "HTTP/web.example.test@EXAMPLE.TEST";
        let keys = first.get(web).unwrap_or_else(|| panic!("{first:?}"));
        assert!(keys.enctypes.contains(&18), "{keys:?}");
        assert!(!weak_only(&keys.enctypes));
        let out = std::process::Command::new("klist")
            .args(["-kte", &keytab.display().to_string()])
            .output()
            .expect("klist runs (Debian's krb5-user, which ./scripts/test installs)");
        let listed = String::from_utf8_lossy(&out.stdout);
        for enctype in &keys.enctypes {
            assert!(listed.contains(&enctype_name(*enctype)), "{listed}");
        }
        assert!(listed.contains(&format!("{:>4} ", keys.kvno)), "{listed}");
        // A re-key's keys appended: the newest version is shown.
        realm.rekey_service("HTTP/web.example.test").unwrap();
        realm.export_keys("HTTP/web.example.test", &keytab).unwrap();
        let second = principals(&keytab).unwrap();
        assert_eq!(second[web].kvno, keys.kvno + 1, "{second:?}");
        assert!(parse(b"\x05\x01").is_none() && parse(b"junk").is_none());
        assert!(principals(Path::new("/dev/zero")).is_none(), "not a regular file");
        assert!(parse(b"\x05\x02\x00\x00\x00\x10short").unwrap().is_empty());

        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
        };
        let none = ("KRB5_CONFIG", "/nonexistent-palisade".to_owned());
        assert_eq!(
            acceptor_keytab(&env(vec![
                ("KRB5_KTNAME", "FILE:/k/web.keytab".into()),
                none.clone()
            ])),
            Some(PathBuf::from("/k/web.keytab"))
        );
        assert_eq!(
            acceptor_keytab(&env(vec![("KRB5_KTNAME", "/k/web.keytab".into()), none.clone()])),
            Some(PathBuf::from("/k/web.keytab"))
        );
        assert_eq!(
            acceptor_keytab(&env(vec![("KRB5_KTNAME", "MEMORY:x".into()), none.clone()])),
            None
        );
        assert_eq!(
            acceptor_keytab(&env(vec![none])),
            Some(PathBuf::from("/etc/krb5.keytab"))
        );
        assert!(weak_only(&[23]) && weak_only(&[23, 16]) && !weak_only(&[23, 18]) && !weak_only(&[]));
    }
}
