//! Session cookies, as mod_auth_gssapi's `GssapiUseSessions`: after one
//! successful Negotiate, an encrypted, authenticated, expiring cookie
//! spares the following requests the GSSAPI work. AES-256-GCM with a key
//! from configuration; keys carry an id, so a new key can be added and the
//! old one kept for reading until its cookies have expired. A cookie never
//! outlives the ticket it came from.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A session-cookie key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("session key {id}: {reason}")]
pub struct SessionKeyError {
    id: u8,
    reason: &'static str,
}

/// The session cookie's settings. `Debug` never prints a key.
pub struct SessionCookie {
    pub(crate) name: String,
    /// What a cookie is sealed for (AES-GCM's associated data): its name,
    /// and once built into an authenticator the service it accepts as
    /// ([`bound_to`](Self::bound_to)).
    aad: Vec<u8>,
    keys: Vec<(u8, LessSafeKey)>,
    max_age: Duration,
    secure: bool,
}

impl fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCookie")
            .field("name", &self.name)
            .field("key_ids", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .field("max_age", &self.max_age)
            .field("secure", &self.secure)
            .finish()
    }
}

/// What a cookie carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) principal: String,
    pub(crate) local_name: Option<String>,
    pub(crate) expires: u64,
}

/// The 32-byte key a key file holds, by the rule every key file follows
/// ([`palisade_core::syntax::key_file`]); 32 printable characters are
/// taken as the raw key with a warning naming `file`.
pub(crate) fn parse_key(bytes: &[u8], file: &str) -> Option<Vec<u8>> {
    use palisade_core::syntax::{KeyFile, PRINTABLE_KEY_WARNING, key_file};
    match key_file(bytes) {
        KeyFile::Raw { printable } => {
            if printable {
                palisade_core::config_warning!(target: crate::LOG_TARGET, "`{file}` {PRINTABLE_KEY_WARNING}");
            }
            Some(bytes.to_vec())
        }
        KeyFile::Text(key) => key.filter(|k| k.len() == 32),
        KeyFile::Binary(_) => None,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionCookie {
    /// A cookie named `name` (default max age 1 h, `Secure`, `HttpOnly`,
    /// `SameSite=Lax`). Add at least one key.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            aad: name.as_bytes().to_vec(),
            keys: Vec::new(),
            max_age: Duration::from_secs(3600),
            secure: true,
        }
    }

    /// Adds a 32-byte key under `id`. The first key added seals new
    /// cookies; every key opens them (rotation: put the new key first).
    ///
    /// # Errors
    /// A key that is not 32 bytes, or an id used twice.
    pub fn key(mut self, id: u8, key: &[u8]) -> Result<Self, SessionKeyError> {
        if key.len() != 32 {
            return Err(SessionKeyError {
                id,
                reason: "must be 32 bytes (AES-256)",
            });
        }
        if self.keys.iter().any(|(k, _)| *k == id) {
            return Err(SessionKeyError {
                id,
                reason: "the id is used twice",
            });
        }
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SessionKeyError {
            id,
            reason: "not a usable AES-256 key",
        })?;
        self.keys.push((id, LessSafeKey::new(unbound)));
        Ok(self)
    }

    /// The longest a cookie lives (it also never outlives the ticket).
    #[must_use]
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    /// Sends the cookie over plain HTTP too (no `Secure` attribute). Only
    /// for development: the cookie is a credential.
    #[must_use]
    pub fn insecure_over_http(mut self) -> Self {
        palisade_core::config_warning!(target: crate::LOG_TARGET, "the session cookie is sent without the Secure attribute");
        self.secure = false;
        self
    }

    /// Seals and opens cookies for `service` (the acceptor's name,
    /// `HTTP@` for any of the keytab's): a cookie one service made opens
    /// at no other sharing its name and key (two services behind one host,
    /// routed by path, where a browser sends both the same cookies).
    pub(crate) fn bound_to(mut self, service: &str) -> Self {
        self.aad = [self.name.as_bytes(), b"\0", service.as_bytes()].concat();
        self
    }

    pub(crate) fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The `Set-Cookie` value for a session that the ticket allows for
    /// `ticket_left`.
    pub(crate) fn seal(
        &self,
        principal: &str,
        local_name: Option<&str>,
        ticket_left: Duration,
    ) -> Option<String> {
        let (id, key) = self.keys.first()?;
        let life = self.max_age.min(ticket_left);
        if life.as_secs() == 0 {
            return None;
        }
        let expires = now() + life.as_secs();
        let plain = serde_json::json!({"p": principal, "l": local_name, "e": expires}).to_string();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut data = plain.into_bytes();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.aad.as_slice()),
            &mut data,
        )
        .ok()?;
        let mut raw = Vec::with_capacity(1 + NONCE_LEN + data.len());
        raw.push(*id);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&data);
        let value = URL_SAFE_NO_PAD.encode(raw);
        let secure = if self.secure { "; Secure" } else { "" };
        Some(format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            self.name,
            life.as_secs()
        ))
    }

    /// Opens a cookie value: `None` when it is not ours, tampered with, or
    /// expired.
    pub(crate) fn open(&self, value: &str) -> Option<Session> {
        if value.len() > 4096 {
            return None;
        }
        let mut raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let id = raw[0];
        let (_, key) = self.keys.iter().find(|(k, _)| *k == id)?;
        let nonce = Nonce::try_assume_unique_for_key(&raw[1..=NONCE_LEN]).ok()?;
        let plain = key
            .open_in_place(nonce, Aad::from(self.aad.as_slice()), &mut raw[1 + NONCE_LEN..])
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(plain).ok()?;
        let expires = v["e"].as_u64()?;
        if expires <= now() {
            return None;
        }
        Some(Session {
            principal: v["p"].as_str()?.to_owned(),
            local_name: v["l"].as_str().map(str::to_owned),
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie() -> SessionCookie {
        SessionCookie::new("s")
            .key(1, &[7; 32])
            .unwrap()
            .insecure_over_http()
    }

    fn value(set_cookie: &str) -> &str {
        set_cookie.split(';').next().unwrap().split_once('=').unwrap().1
    }

    #[test]
    fn a_sealed_session_opens_and_a_tampered_one_does_not() {
        let c = cookie();
        let set = c
            .seal("alice@EXAMPLE.TEST", Some("alice"), Duration::from_secs(600))
            .unwrap();
        assert!(set.contains("HttpOnly") && set.contains("Max-Age=600"), "{set}");
        let s = c.open(value(&set)).unwrap();
        assert_eq!(s.principal, "alice@EXAMPLE.TEST");
        let mut raw = URL_SAFE_NO_PAD.decode(value(&set)).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(c.open(&URL_SAFE_NO_PAD.encode(raw)).is_none());
        assert!(c.open("garbage").is_none());
        let other = SessionCookie::new("s").key(1, &[8; 32]).unwrap();
        assert!(other.open(value(&set)).is_none(), "another key cannot open it");
        let renamed = SessionCookie::new("t").key(1, &[7; 32]).unwrap();
        assert!(renamed.open(value(&set)).is_none(), "the name is authenticated");
    }

    /// A cookie is sealed for the service that accepted the ticket: one
    /// that shares its name and key but accepts as another service (or as
    /// any of the keytab's) does not open it.
    #[test]
    fn a_cookie_opens_only_at_the_service_it_was_sealed_for() {
        let for_b = cookie().bound_to("HTTP@b.example");
        let set = for_b
            .seal("alice@EXAMPLE.TEST", None, Duration::from_secs(600))
            .unwrap();
        assert!(for_b.open(value(&set)).is_some());
        assert!(cookie().bound_to("HTTP@b.example").open(value(&set)).is_some());
        for other in [
            cookie().bound_to("HTTP@"),
            cookie().bound_to("HTTP@a.example"),
            cookie(),
        ] {
            assert!(other.open(value(&set)).is_none());
        }
        let any = cookie().bound_to("HTTP@");
        let set = any
            .seal("alice@EXAMPLE.TEST", None, Duration::from_secs(600))
            .unwrap();
        assert!(
            for_b.open(value(&set)).is_none(),
            "a service-wide cookie is not b's"
        );
    }

    #[test]
    fn cookies_never_outlive_the_ticket_and_keys_rotate_by_id() {
        let c = cookie().max_age(Duration::from_secs(3600));
        let set = c.seal("a@R", None, Duration::from_secs(5)).unwrap();
        assert!(set.contains("Max-Age=5"), "{set}");
        assert!(c.seal("a@R", None, Duration::ZERO).is_none());
        let rotated = SessionCookie::new("s")
            .key(2, &[9; 32])
            .unwrap()
            .key(1, &[7; 32])
            .unwrap();
        assert!(rotated.open(value(&set)).is_some(), "old cookies still open");
        let new = rotated.seal("a@R", None, Duration::from_secs(60)).unwrap();
        assert!(
            cookie().open(value(&new)).is_none(),
            "new cookies use the new key"
        );
        assert!(SessionCookie::new("s").key(1, &[0; 16]).is_err());
        assert!(format!("{rotated:?}").contains("key_ids"));
        assert!(!format!("{rotated:?}").contains('9'), "no key bytes in Debug");
    }
}
