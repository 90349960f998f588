//! Sealed cookies: a value encrypted and authenticated with AES-256-GCM
//! under a named key, split over several cookies when it is large.
//!
//! ```
//! use palisade_core::authn::OwnedRequest;
//! use palisade_signin::cookie::{CookieKey, CookieSealer, Opened};
//! use std::time::Duration;
//!
//! let sealer = CookieSealer::new("session", vec![CookieKey::generate("2025-06")?])?;
//! let set_cookies = sealer.seal(b"alice", Some(Duration::from_secs(3600)), 0)?;
//! assert!(set_cookies[0].starts_with("session=v1.1.2025-06."));
//! assert!(set_cookies[0].ends_with("; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax"));
//!
//! // The browser sends it back.
//! let pair = set_cookies[0].split(';').next().unwrap();
//! let req = OwnedRequest::get("/").header("cookie", format!("theme=dark; {pair}"));
//! match sealer.open(&req) {
//!     Opened::Valid { plaintext, current_key, .. } => {
//!         assert_eq!(plaintext, b"alice");
//!         assert!(current_key);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Format
//!
//! The value is `v1.<chunk count>.<key id>.<base64url, no padding, of nonce
//! ‖ ciphertext ‖ tag>`: sealed with the newest key, under a fresh random
//! 96-bit nonce, with the additional authenticated data
//! `palisade-cookie/v1 NUL <cookie name> NUL <key id>`, so a value moved to
//! another cookie name or relabelled with another key id does not open.
//! A value longer than the chunk size (3800 bytes by default) is split: the
//! first part under the cookie's name, the next ones under `<name>_1`,
//! `<name>_2`, … (the count in the first part says how many to read), at
//! most 8 parts by default.
//!
//! # Keys and rotation
//!
//! A [`CookieSealer`] holds its keys newest first: the first seals, every
//! one opens. To rotate, put a new key first and keep the old one until the
//! cookies it sealed have expired; [`Opened::Valid`] says when an older key
//! opened a cookie (`current_key: false`), so the caller can seal it again.
//!
//! # Attributes
//!
//! Cookies are always `HttpOnly`, `Secure` unless turned off (then
//! `SameSite=None` and the `__Secure-` and `__Host-` name prefixes are
//! refused), `SameSite=Lax` and `Path=/` unless set otherwise. No `Domain`
//! is ever set: the cookie goes back to the host that set it only.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::authn::RequestHead;
use palisade_core::syntax::{KeyFile, key_text};

/// Bytes in an AES-256 key.
const KEY_LEN: usize = 32;
/// Bytes in an AES-GCM tag.
const TAG_LEN: usize = 16;
/// The longest key id.
const MAX_ID_LEN: usize = 32;
/// The prefix of every value.
const VERSION: &str = "v1.";
/// The start of the additional authenticated data.
const AAD_LABEL: &[u8] = b"palisade-cookie/v1\0";
/// The most chunks a sealer can be set to, and the most chunk names a
/// request is searched for.
const CHUNK_LIMIT: usize = 64;
/// The default [`CookieSealerBuilder::max_chunks`].
const DEFAULT_MAX_CHUNKS: usize = 8;
/// The default [`CookieSealerBuilder::chunk_size`].
const DEFAULT_CHUNK_SIZE: usize = 3800;
/// The bounds of [`CookieSealerBuilder::chunk_size`].
const CHUNK_SIZES: std::ops::RangeInclusive<usize> = 64..=4000;

/// A key or sealer configuration that cannot be used. Messages name the
/// key id, file or setting; they never carry key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key id is not 1 to 32 of `A-Z a-z 0-9 _ -`.
    #[error("cookie key id {0:?} is not valid: use 1 to 32 characters of A-Z a-z 0-9 _ -")]
    InvalidId(String),
    /// The key does not have 32 bytes.
    #[error("cookie key {id:?} has {len} bytes; AES-256-GCM needs exactly 32")]
    WrongLength {
        /// The key's id.
        id: String,
        /// How many bytes it has.
        len: usize,
    },
    /// The key text is neither 64 hex digits nor base64.
    #[error("cookie key {id:?} is neither 64 hex digits nor base64 of 32 bytes")]
    NotKeyText {
        /// The key's id.
        id: String,
    },
    /// The key file could not be read.
    #[error("cannot read cookie key file {}: {error}", palisade_core::syntax::file_as_shown(&path.to_string_lossy()))]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why (in the message too, so not its `source`).
        error: std::io::Error,
    },
    /// The key file's content is not a key.
    #[error("cookie key file {}: {problem}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content ([`KeyError::WrongLength`] or
        /// [`KeyError::NotKeyText`]).
        problem: Box<KeyError>,
    },
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The sealer was given no key.
    #[error("a cookie sealer needs at least one key")]
    NoKeys,
    /// Two keys have the same id.
    #[error("cookie key id {0:?} is given twice")]
    DuplicateId(String),
    /// The cookie name is not a token (RFC 9110) of at most 128 characters.
    #[error("cookie name {0:?} is not a valid cookie name")]
    InvalidName(String),
    /// The path does not start with `/` or holds a space, `;` or a
    /// non-printable or non-ASCII character.
    #[error("cookie path {0:?} must start with `/` and hold only printable ASCII other than `;`")]
    InvalidPath(String),
    /// `SameSite=None` without `Secure`: browsers refuse such cookies.
    #[error("SameSite=None cookies must be Secure")]
    SameSiteNoneWithoutSecure,
    /// The name's `__Secure-` or `__Host-` prefix asks for what the
    /// settings do not give (`Secure`; for `__Host-` also `Path=/`).
    #[error("cookie name {0:?}: its prefix needs Secure (and Path=/ for __Host-)")]
    PrefixNotHonoured(String),
    /// `max_chunks` is not 1 to 64 or `chunk_size` not 64 to 4000 bytes.
    #[error("a cookie needs 1 to 64 chunks of 64 to 4000 bytes")]
    InvalidLimits,
}

/// Why [`CookieSealer::seal`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sealed value would need more than `max_chunks` cookies.
    #[error("the sealed cookie would be {len} bytes; at most {max} fit in its cookies")]
    TooLarge {
        /// The length of the sealed value.
        len: usize,
        /// The most the cookies can carry (`max_chunks × chunk_size`).
        max: usize,
    },
    /// Encryption failed (the system random source did not give a nonce).
    #[error("sealing the cookie failed")]
    Crypto,
}

/// Why a cookie the request carried did not open. Client faults: a caller
/// clears the cookie and treats the request as signed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidCookie {
    /// Not of the form `v1.<count>.<key id>.<base64url>`, or not UTF-8.
    #[error("the cookie is malformed")]
    Malformed,
    /// Sealed with a key this sealer no longer (or never) held.
    #[error("the cookie was sealed with an unknown key")]
    UnknownKey,
    /// The authentication tag does not match: changed, moved from another
    /// cookie name, or relabelled with another key id.
    #[error("the cookie does not authenticate")]
    Tampered,
    /// A chunk the first one announces is missing.
    #[error("a part of the cookie is missing")]
    MissingChunk,
    /// More chunks than `max_chunks`, or longer than
    /// `max_chunks × chunk_size`.
    #[error("the cookie is too large")]
    TooLarge,
}

/// A 32-byte AES-256-GCM key with its id (`[A-Za-z0-9_-]{1,32}`), which
/// every cookie it seals names. `Debug` prints the id only. Cloning shares
/// the key (an `Arc`).
#[derive(Clone)]
pub struct CookieKey {
    id: String,
    key: Arc<RandomizedNonceKey>,
    /// SHA-256 of the key's bytes: two keys are told apart (a reload that
    /// changed a key file) without keeping the bytes.
    digest: [u8; 32],
}

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CookieKey {
    /// A key from its 32 bytes.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidId`], or [`KeyError::WrongLength`] when `key` is
    /// not 32 bytes.
    pub fn new(id: &str, key: &[u8]) -> Result<Self, KeyError> {
        if !valid_id(id) {
            return Err(KeyError::InvalidId(id.to_owned()));
        }
        if key.len() != KEY_LEN {
            return Err(KeyError::WrongLength {
                id: id.to_owned(),
                len: key.len(),
            });
        }
        let digest = sha256(key);
        let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| KeyError::WrongLength {
            id: id.to_owned(),
            len: key.len(),
        })?;
        Ok(Self {
            id: id.to_owned(),
            key: Arc::new(key),
            digest,
        })
    }

    /// A key from text: 64 hex digits, or base64 (standard or URL-safe
    /// alphabet, padded or not) of 32 bytes. Surrounding white space (a
    /// trailing newline) is ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidId`], [`KeyError::NotKeyText`], or
    /// [`KeyError::WrongLength`] when the text decodes to other than 32
    /// bytes.
    pub fn from_text(id: &str, text: &str) -> Result<Self, KeyError> {
        if !valid_id(id) {
            return Err(KeyError::InvalidId(id.to_owned()));
        }
        let bytes = key_text(text).ok_or_else(|| KeyError::NotKeyText { id: id.to_owned() })?;
        Self::new(id, &bytes)
    }

    /// A key from a file holding its 32 raw bytes, or its text as
    /// [`from_text`](Self::from_text) reads it. A 32-byte file of text with
    /// white space in it (a pass phrase, a line and its end) is read as
    /// text, and refused. One of 32 printable characters without white
    /// space is taken as the raw key, with a warning: random bytes are
    /// almost never all printable, so it is more likely a typed or
    /// generated string, whose strength is the string's.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidId`]; [`KeyError::ReadFile`] when the file cannot
    /// be read; [`KeyError::KeyFile`] naming the file and what is wrong
    /// with its content (never the content).
    pub fn from_file(id: &str, path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        if !valid_id(id) {
            return Err(KeyError::InvalidId(id.to_owned()));
        }
        let bytes = std::fs::read(path).map_err(|error| KeyError::ReadFile {
            path: path.to_owned(),
            error,
        })?;
        let in_file = |problem: KeyError| KeyError::KeyFile {
            path: path.to_owned(),
            problem: Box::new(problem),
        };
        match palisade_core::syntax::key_file(&bytes) {
            KeyFile::Raw { printable } => {
                if printable {
                    palisade_core::config_warning!(
                        target: crate::LOG_TARGET,
                        "cookie key {id:?}: `{}` {}",
                        path.display(),
                        palisade_core::syntax::PRINTABLE_KEY_WARNING
                    );
                }
                Self::new(id, &bytes).map_err(in_file)
            }
            KeyFile::Text(Some(key)) => Self::new(id, &key).map_err(in_file),
            KeyFile::Text(None) => Err(in_file(KeyError::NotKeyText { id: id.to_owned() })),
            KeyFile::Binary(len) => Err(in_file(KeyError::WrongLength {
                id: id.to_owned(),
                len,
            })),
        }
    }

    /// A new random key. Cookies it seals do not open in another process
    /// (another replica, or this service after a restart): for tests and
    /// single-process development only.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidId`], or [`KeyError::Random`] when the system
    /// random source fails.
    pub fn generate(id: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        let key = Self::new(id, &bytes);
        bytes.fill(0);
        key
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The same id and the same key bytes.
impl PartialEq for CookieKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.digest == other.digest
    }
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `SameSite` attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on same-site requests and top-level cross-site navigations
    /// (`GET` links, the identity provider's redirect back).
    #[default]
    Lax,
    /// Sent on same-site requests only.
    Strict,
    /// Sent on every request, cross-site ones included; needs `Secure`.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Configures a [`CookieSealer`]; [`build`](Self::build) checks the
/// settings. `Debug` prints key ids only.
#[must_use]
pub struct CookieSealerBuilder {
    name: String,
    keys: Vec<CookieKey>,
    secure: bool,
    path: String,
    same_site: SameSite,
    max_chunks: usize,
    chunk_size: usize,
}

impl fmt::Debug for CookieSealerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieSealerBuilder")
            .field("name", &self.name)
            .field(
                "key_ids",
                &self.keys.iter().map(CookieKey::id).collect::<Vec<_>>(),
            )
            .field("secure", &self.secure)
            .field("path", &self.path)
            .field("same_site", &self.same_site)
            .field("max_chunks", &self.max_chunks)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

impl CookieSealerBuilder {
    /// Whether cookies carry `Secure` (sent over HTTPS only). Default
    /// `true`; turn it off for plain-HTTP development only.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// The `Path` attribute. Default `/`.
    pub fn path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.path);
        self
    }

    /// The `SameSite` attribute. Default [`SameSite::Lax`], which the
    /// identity provider's redirect back needs; [`SameSite::None`] needs
    /// `Secure`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The most cookies one value is split over (1 to 64). Default 8.
    pub fn max_chunks(mut self, n: usize) -> Self {
        self.max_chunks = n;
        self
    }

    /// The most bytes of value per cookie (64 to 4000; browsers keep about
    /// 4096 bytes of name, value and attributes). Default 3800.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`KeyError::NoKeys`], [`KeyError::DuplicateId`],
    /// [`KeyError::InvalidName`], [`KeyError::InvalidPath`],
    /// [`KeyError::SameSiteNoneWithoutSecure`],
    /// [`KeyError::PrefixNotHonoured`], [`KeyError::InvalidLimits`].
    pub fn build(self) -> Result<CookieSealer, KeyError> {
        if self.keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        for (i, key) in self.keys.iter().enumerate() {
            if self.keys[..i].iter().any(|k| k.id == key.id) {
                return Err(KeyError::DuplicateId(key.id.clone()));
            }
        }
        if !palisade_core::syntax::is_cookie_name(&self.name) {
            return Err(KeyError::InvalidName(self.name));
        }
        let path_ok =
            self.path.starts_with('/') && self.path.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if !path_ok {
            return Err(KeyError::InvalidPath(self.path));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(KeyError::SameSiteNoneWithoutSecure);
        }
        let prefix_ok = match name_prefix(&self.name) {
            Some(NamePrefix::Host) => self.secure && self.path == "/",
            Some(NamePrefix::Secure) => self.secure,
            None => true,
        };
        if !prefix_ok {
            return Err(KeyError::PrefixNotHonoured(self.name));
        }
        if !(1..=CHUNK_LIMIT).contains(&self.max_chunks) || !CHUNK_SIZES.contains(&self.chunk_size) {
            return Err(KeyError::InvalidLimits);
        }
        let mut attributes = String::new();
        if self.secure {
            attributes.push_str("; Secure");
        }
        attributes.push_str("; SameSite=");
        attributes.push_str(self.same_site.as_str());
        let keys = self
            .keys
            .into_iter()
            .map(|key| {
                let mut aad = AAD_LABEL.to_vec();
                aad.extend_from_slice(self.name.as_bytes());
                aad.push(0);
                aad.extend_from_slice(key.id.as_bytes());
                (key, aad)
            })
            .collect();
        Ok(CookieSealer {
            inner: Arc::new(Inner {
                name: self.name,
                keys,
                secure: self.secure,
                path: self.path,
                same_site: self.same_site,
                max_chunks: self.max_chunks,
                chunk_size: self.chunk_size,
                attributes,
            }),
        })
    }
}

/// Seals values into cookies and opens them from requests; see the module
/// docs. Cheap to clone. `Debug` prints key ids only.
#[derive(Clone)]
pub struct CookieSealer {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Newest first, each with its additional authenticated data.
    keys: Vec<(CookieKey, Vec<u8>)>,
    secure: bool,
    path: String,
    same_site: SameSite,
    max_chunks: usize,
    chunk_size: usize,
    /// `; Secure; SameSite=Lax`: what ends every `Set-Cookie`.
    attributes: String,
}

impl fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("CookieSealer")
            .field("name", &inner.name)
            .field(
                "key_ids",
                &inner.keys.iter().map(|(k, _)| k.id()).collect::<Vec<_>>(),
            )
            .field("secure", &inner.secure)
            .field("path", &inner.path)
            .field("same_site", &inner.same_site)
            .field("max_chunks", &inner.max_chunks)
            .field("chunk_size", &inner.chunk_size)
            .finish()
    }
}

/// What [`CookieSealer::open`] found in a request.
pub enum Opened {
    /// The request carries no such cookie.
    Absent,
    /// The cookie opened.
    Valid {
        /// What was sealed.
        plaintext: Vec<u8>,
        /// How many cookie names (`name`, `name_1`, …) the request carried:
        /// one more than the highest chunk index. Pass it to
        /// [`CookieSealer::seal`] or [`CookieSealer::clear`].
        chunks: usize,
        /// `false` when an older key opened it: seal it again.
        current_key: bool,
    },
    /// The cookie is there but does not open.
    Invalid {
        /// Why.
        reason: InvalidCookie,
        /// How many cookie names the request carried, as in
        /// [`Opened::Valid`]: pass it to [`CookieSealer::clear`].
        chunks: usize,
    },
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Opened::Absent => f.write_str("Absent"),
            Opened::Valid {
                plaintext,
                chunks,
                current_key,
            } => f
                .debug_struct("Valid")
                .field("plaintext_len", &plaintext.len())
                .field("chunks", chunks)
                .field("current_key", current_key)
                .finish(),
            Opened::Invalid { reason, chunks } => f
                .debug_struct("Invalid")
                .field("reason", reason)
                .field("chunks", chunks)
                .finish(),
        }
    }
}

/// The cookie's value as the request carried it, chunks joined, not yet
/// decrypted: for callers that cache what a value opens to.
pub enum RawCookie<'r> {
    /// The request carries no such cookie.
    Absent,
    /// The joined value, borrowed from the request when it is one chunk.
    Present {
        /// The value, to give to [`CookieSealer::open_raw`].
        value: Cow<'r, str>,
        /// How many cookie names the request carried, as in
        /// [`Opened::Valid`].
        chunks: usize,
    },
    /// The chunks cannot be joined.
    Invalid {
        /// Why.
        reason: InvalidCookie,
        /// How many cookie names the request carried.
        chunks: usize,
    },
}

impl RawCookie<'_> {
    /// How many cookie names the request carried (0 without the cookie):
    /// what [`CookieSealer::clear`] and a new seal must replace.
    #[must_use]
    pub fn chunks(&self) -> usize {
        match self {
            RawCookie::Absent => 0,
            RawCookie::Present { chunks, .. } | RawCookie::Invalid { chunks, .. } => *chunks,
        }
    }
}

impl fmt::Debug for RawCookie<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawCookie::Absent => f.write_str("Absent"),
            RawCookie::Present { value, chunks } => f
                .debug_struct("Present")
                .field("value_len", &value.len())
                .field("chunks", chunks)
                .finish(),
            RawCookie::Invalid { reason, chunks } => f
                .debug_struct("Invalid")
                .field("reason", reason)
                .field("chunks", chunks)
                .finish(),
        }
    }
}

/// A value [`CookieSealer::open_raw`] opened.
#[non_exhaustive]
pub struct Unsealed {
    /// What was sealed.
    pub plaintext: Vec<u8>,
    /// `false` when an older key opened it: seal it again.
    pub current_key: bool,
}

impl fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealed")
            .field("plaintext_len", &self.plaintext.len())
            .field("current_key", &self.current_key)
            .finish()
    }
}

impl CookieSealer {
    /// A sealer for the cookie `name` with the default settings (`Secure`,
    /// `HttpOnly`, `SameSite=Lax`, `Path=/`, at most 8 chunks of 3800
    /// bytes). `keys` are newest first: the first seals.
    ///
    /// # Errors
    ///
    /// As [`CookieSealerBuilder::build`].
    pub fn new(name: &str, keys: Vec<CookieKey>) -> Result<Self, KeyError> {
        Self::builder(name, keys).build()
    }

    /// A builder for the cookie `name` with `keys` (newest first), to
    /// change the defaults.
    pub fn builder(name: &str, keys: Vec<CookieKey>) -> CookieSealerBuilder {
        CookieSealerBuilder {
            name: name.to_owned(),
            keys,
            secure: true,
            path: "/".to_owned(),
            same_site: SameSite::default(),
            max_chunks: DEFAULT_MAX_CHUNKS,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    /// The cookie's name (that of its first chunk).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The id of the key that seals.
    #[must_use]
    pub fn current_key_id(&self) -> &str {
        self.inner.keys[0].0.id()
    }

    /// The most chunks a value is split over.
    #[must_use]
    pub fn max_chunks(&self) -> usize {
        self.inner.max_chunks
    }

    /// Seals `plaintext` with the newest key and returns the `Set-Cookie`
    /// header values: one per chunk, with `Max-Age` when given (rounded up
    /// to whole seconds; without it the cookie lasts until the browser
    /// closes), then removals of the chunk names from the new count up to
    /// `previous_chunks` (what the request carried: [`Opened`]'s
    /// `chunks`), so no stale chunk is left.
    ///
    /// # Errors
    ///
    /// [`SealError::TooLarge`] when the value needs more than `max_chunks`
    /// cookies; [`SealError::Crypto`] when encryption fails.
    pub fn seal(
        &self,
        plaintext: &[u8],
        max_age: Option<Duration>,
        previous_chunks: usize,
    ) -> Result<Vec<String>, SealError> {
        let inner = &*self.inner;
        let (key, aad) = &inner.keys[0];
        let sealed_len = NONCE_LEN + plaintext.len() + TAG_LEN;
        // base64 without padding: 4 characters per 3 bytes, rounded up.
        let body_len = (sealed_len * 4).div_ceil(3);
        let max = inner.max_chunks * inner.chunk_size;
        let Some((count, total)) = chunk_count(key.id.len(), body_len, inner.chunk_size, inner.max_chunks)
        else {
            let len = VERSION.len() + 2 + key.id.len() + 1 + body_len;
            return Err(SealError::TooLarge { len, max });
        };
        let sealed = seal_framed(&key.key, aad, plaintext).ok_or(SealError::Crypto)?;
        debug_assert_eq!(sealed.len(), sealed_len);
        let mut value = String::with_capacity(total);
        value.push_str(VERSION);
        value.push_str(&count.to_string());
        value.push('.');
        value.push_str(&key.id);
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(&sealed, &mut value);
        debug_assert_eq!(value.len(), total);
        let max_age = max_age.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let mut out = Vec::with_capacity(count.max(previous_chunks));
        // The value is ASCII: any byte offset is a character boundary.
        for i in 0..count {
            let start = i * inner.chunk_size;
            let end = (start + inner.chunk_size).min(value.len());
            out.push(self.set_cookie(i, &value[start..end], max_age));
        }
        for i in count..previous_chunks.min(CHUNK_LIMIT) {
            out.push(self.set_cookie(i, "", Some(0)));
        }
        Ok(out)
    }

    /// `Set-Cookie` header values removing the cookie and its chunks: the
    /// first `chunks` names ([`Opened`]'s `chunks`), at least the first.
    #[must_use]
    pub fn clear(&self, chunks: usize) -> Vec<String> {
        (0..chunks.clamp(1, CHUNK_LIMIT))
            .map(|i| self.set_cookie(i, "", Some(0)))
            .collect()
    }

    fn set_cookie(&self, index: usize, value: &str, max_age: Option<u64>) -> String {
        let inner = &*self.inner;
        let mut out = String::with_capacity(inner.name.len() + value.len() + 64);
        out.push_str(&inner.name);
        if index > 0 {
            out.push('_');
            out.push_str(&index.to_string());
        }
        out.push('=');
        out.push_str(value);
        out.push_str("; Path=");
        out.push_str(&inner.path);
        if let Some(secs) = max_age {
            out.push_str("; Max-Age=");
            out.push_str(&secs.to_string());
        }
        out.push_str("; HttpOnly");
        out.push_str(&inner.attributes);
        out
    }

    /// Finds the cookie in the request, joins its chunks and opens it with
    /// the key its id names. Never panics, whatever the request carries.
    #[must_use]
    pub fn open(&self, req: &dyn RequestHead) -> Opened {
        match self.raw(req) {
            RawCookie::Absent => Opened::Absent,
            RawCookie::Invalid { reason, chunks } => Opened::Invalid { reason, chunks },
            RawCookie::Present { value, chunks } => match self.open_raw(&value) {
                Ok(Unsealed {
                    plaintext,
                    current_key,
                }) => Opened::Valid {
                    plaintext,
                    chunks,
                    current_key,
                },
                Err(reason) => Opened::Invalid { reason, chunks },
            },
        }
    }

    /// The cookie's value as the request carried it, chunks joined,
    /// without decrypting: borrowed from the request when it is one chunk.
    /// Every `cookie` header is read (HTTP/2 sends one per cookie); pairs
    /// are separated by `;` and optional spaces; the first occurrence of a
    /// name wins.
    #[must_use]
    pub fn raw<'r>(&self, req: &'r dyn RequestHead) -> RawCookie<'r> {
        match self.parts(req) {
            Ok(parts) => match parts.join() {
                Ok(value) => RawCookie::Present {
                    value,
                    chunks: parts.chunks,
                },
                Err(reason) => RawCookie::Invalid {
                    reason,
                    chunks: parts.chunks,
                },
            },
            Err(raw) => raw,
        }
    }

    /// The cookie's chunks as the request carried them, in order, not yet
    /// joined (a cache can compare them in place); `Err` with what
    /// [`CookieSealer::raw`] answers when they are absent, incomplete, too
    /// many or too large.
    pub(crate) fn parts<'r>(&self, req: &'r dyn RequestHead) -> Result<Parts<'r>, RawCookie<'r>> {
        let inner = &*self.inner;
        let mut slots: [&'r [u8]; CHUNK_LIMIT] = [&[]; CHUNK_LIMIT];
        let mut seen = 0u64;
        for (name, value) in cookie_pairs(req) {
            let Some(i) = chunk_index(inner.name.as_bytes(), name) else {
                continue;
            };
            if seen & (1 << i) == 0 {
                seen |= 1 << i;
                slots[i] = value;
            }
        }
        let chunks = (u64::BITS - seen.leading_zeros()) as usize;
        let invalid = |reason| Err(RawCookie::Invalid { reason, chunks });
        if seen & 1 == 0 {
            return if chunks == 0 {
                Err(RawCookie::Absent)
            } else {
                invalid(InvalidCookie::MissingChunk)
            };
        }
        let count = match parse_count(slots[0], inner.max_chunks) {
            Ok(count) => count,
            Err(reason) => return invalid(reason),
        };
        // Chunks 0 to count - 1, every one (count is at least 1).
        let wanted = u64::MAX >> (u64::BITS as usize - count);
        if seen & wanted != wanted {
            return invalid(InvalidCookie::MissingChunk);
        }
        let len: usize = slots[..count].iter().map(|p| p.len()).sum();
        if len > inner.max_chunks * inner.chunk_size {
            return invalid(InvalidCookie::TooLarge);
        }
        Ok(Parts {
            slots,
            count,
            len,
            chunks,
        })
    }

    /// Opens a joined value ([`RawCookie::Present`]'s `value`) with the key
    /// its id names. Never panics, whatever `raw` holds.
    ///
    /// # Errors
    ///
    /// Why it does not open.
    pub fn open_raw(&self, raw: &str) -> Result<Unsealed, InvalidCookie> {
        let inner = &*self.inner;
        if raw.len() > inner.max_chunks * inner.chunk_size {
            return Err(InvalidCookie::TooLarge);
        }
        parse_count(raw.as_bytes(), inner.max_chunks)?;
        let rest = raw
            .strip_prefix(VERSION)
            .and_then(|r| r.split_once('.'))
            .map(|(_, rest)| rest)
            .ok_or(InvalidCookie::Malformed)?;
        let (id, body) = rest.split_once('.').ok_or(InvalidCookie::Malformed)?;
        if !valid_id(id) {
            return Err(InvalidCookie::Malformed);
        }
        let position = inner
            .keys
            .iter()
            .position(|(k, _)| k.id == id)
            .ok_or(InvalidCookie::UnknownKey)?;
        let (key, aad) = &inner.keys[position];
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InvalidCookie::Malformed)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(InvalidCookie::Malformed);
        }
        let plaintext = open_framed(&key.key, aad, bytes).ok_or(InvalidCookie::Tampered)?;
        Ok(Unsealed {
            plaintext,
            current_key: position == 0,
        })
    }
}

/// `nonce ‖ ciphertext ‖ tag`: `plaintext` sealed with AES-256-GCM under
/// `key` and a fresh random nonce, bound to `aad`. The framing of session
/// cookies and of sessions kept in the store.
pub(crate) fn seal_framed(key: &RandomizedNonceKey, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    in_out.extend_from_slice(plaintext);
    let nonce = key.seal_in_place_append_tag(Aad::from(aad), &mut in_out).ok()?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
    sealed.extend_from_slice(nonce.as_ref());
    sealed.extend_from_slice(&in_out);
    Some(sealed)
}

/// The plaintext of what [`seal_framed`] sealed with `key` and `aad`;
/// `None` when it does not open (too short, another key or AAD, tampered).
pub(crate) fn open_framed(key: &RandomizedNonceKey, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut sealed[NONCE_LEN..])
        .ok()?
        .len();
    sealed.copy_within(NONCE_LEN..NONCE_LEN + len, 0);
    sealed.truncate(len);
    Some(sealed)
}

/// The fewest chunks `v1.<n>.<id>.<body>` splits into, with the value's
/// length, or `None` when more than `max` are needed.
fn chunk_count(id_len: usize, body_len: usize, chunk_size: usize, max: usize) -> Option<(usize, usize)> {
    let mut n: usize = 1;
    loop {
        let total = VERSION.len() + decimal_digits(n) + 1 + id_len + 1 + body_len;
        let needed = total.div_ceil(chunk_size);
        if needed > max {
            return None;
        }
        // `needed` never decreases as `n` grows, so this ends with
        // `needed == n`.
        if needed <= n {
            return Some((n, total));
        }
        n = needed;
    }
}

fn decimal_digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The chunk count in `v1.<count>.…`: 1 to `max`, decimal without leading
/// zeros.
fn parse_count(value: &[u8], max: usize) -> Result<usize, InvalidCookie> {
    let digits = value
        .strip_prefix(VERSION.as_bytes())
        .and_then(|r| Some(&r[..memchr::memchr(b'.', r)?]))
        .ok_or(InvalidCookie::Malformed)?;
    let well_formed =
        !digits.is_empty() && digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit) && digits[0] != b'0';
    if !well_formed {
        return Err(InvalidCookie::Malformed);
    }
    let count = digits.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    if count > max {
        return Err(InvalidCookie::TooLarge);
    }
    Ok(count)
}

/// A cookie's chunks as a request carried them: [`CookieSealer::parts`].
pub(crate) struct Parts<'r> {
    slots: [&'r [u8]; CHUNK_LIMIT],
    count: usize,
    len: usize,
    /// How many cookie names the request carried, as in [`Opened`].
    pub(crate) chunks: usize,
}

impl<'r> Parts<'r> {
    /// The chunks, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'r [u8]> + Clone + '_ {
        self.slots[..self.count].iter().copied()
    }

    /// The length of the joined value.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The joined value, borrowed when it is one chunk.
    pub(crate) fn join(&self) -> Result<Cow<'r, str>, InvalidCookie> {
        if self.count == 1 {
            return std::str::from_utf8(self.slots[0])
                .map(Cow::Borrowed)
                .map_err(|_| InvalidCookie::Malformed);
        }
        let mut joined = String::with_capacity(self.len);
        for part in self.iter() {
            joined.push_str(std::str::from_utf8(part).map_err(|_| InvalidCookie::Malformed)?);
        }
        Ok(Cow::Owned(joined))
    }
}

/// Every `name=value` pair of the request's `cookie` headers, in order
/// (HTTP/2 sends one header per cookie): pairs are separated by `;` and
/// optional spaces, a value may be quoted.
pub(crate) fn cookie_pairs<'r>(req: &'r dyn RequestHead) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + 'r {
    (0..)
        .map_while(move |index| req.header_value("cookie", index))
        .flat_map(Pairs)
}

/// The `name=value` pairs of one `cookie` header. Separators are found
/// with `memchr`: a session's header holds several kilobytes of value.
struct Pairs<'r>(&'r [u8]);

impl<'r> Iterator for Pairs<'r> {
    type Item = (&'r [u8], &'r [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.0.is_empty() {
            let rest = self.0;
            let (pair, next) = match memchr::memchr(b';', rest) {
                Some(end) => (&rest[..end], &rest[end + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            self.0 = next;
            if let Some(eq) = memchr::memchr(b'=', pair) {
                return Some((trim(&pair[..eq]), unquote(trim(&pair[eq + 1..]))));
            }
        }
        None
    }
}

/// Which chunk of the cookie `name` a cookie named `candidate` is: 0 for
/// `name`, i for `name_i` (1 to 63, no leading zeros).
fn chunk_index(name: &[u8], candidate: &[u8]) -> Option<usize> {
    let rest = candidate.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(b"_")?;
    if digits.is_empty() || digits.len() > 2 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let i = digits.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    (i < CHUNK_LIMIT).then_some(i)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !is_space(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A cookie value without the double quotes RFC 6265 allows around it.
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// A cookie name prefix that browsers enforce (RFC 6265bis, matched
/// case-insensitively).
enum NamePrefix {
    /// `__Host-`: `Secure`, `Path=/`, no `Domain`.
    Host,
    /// `__Secure-`: `Secure`.
    Secure,
}

fn name_prefix(name: &str) -> Option<NamePrefix> {
    let starts = |p: &str| {
        name.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    if starts("__Host-") {
        Some(NamePrefix::Host)
    } else if starts("__Secure-") {
        Some(NamePrefix::Secure)
    } else {
        None
    }
}

/// Whether a browser accepts a cookie of this name only with `Secure`
/// (a `__Host-` or `__Secure-` prefix).
pub(crate) fn prefix_requires_secure(name: &str) -> bool {
    name_prefix(name).is_some()
}

/// The SHA-256 of `secret`: how a key is compared (a reload keeping one
/// configured alike) without keeping its bytes twice.
pub(crate) fn sha256(secret: &[u8]) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret).as_ref());
    digest
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    use palisade_core::authn::OwnedRequest;
    use proptest::prelude::*;

    use super::*;

    fn key(id: &str, byte: u8) -> CookieKey {
        CookieKey::new(id, &[byte; 32]).unwrap()
    }

    fn sealer(keys: Vec<CookieKey>) -> CookieSealer {
        CookieSealer::new("sess", keys).unwrap()
    }

    /// The `name=value` pairs of the cookies `set_cookies` sets (removals
    /// left out), as a browser would send them back in one header.
    fn cookie_header(set_cookies: &[String]) -> String {
        set_cookies
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap())
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn request(header: &str) -> OwnedRequest {
        OwnedRequest::get("/").header("cookie", header)
    }

    fn value_of(set_cookie: &str) -> &str {
        set_cookie.split(';').next().unwrap().split_once('=').unwrap().1
    }

    fn valid(opened: Opened) -> (Vec<u8>, usize, bool) {
        match opened {
            Opened::Valid {
                plaintext,
                chunks,
                current_key,
            } => (plaintext, chunks, current_key),
            other => panic!("not valid: {other:?}"),
        }
    }

    fn invalid(opened: &Opened) -> InvalidCookie {
        match opened {
            Opened::Invalid { reason, .. } => *reason,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn a_small_value_round_trips_in_one_cookie() {
        let s = sealer(vec![key("k1", 1)]);
        let set = s.seal(b"hello", None, 0).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set[0].starts_with("sess=v1.1.k1."), "{}", set[0]);
        let (plaintext, chunks, current) = valid(s.open(&request(&cookie_header(&set))));
        assert_eq!(plaintext, b"hello");
        assert_eq!(chunks, 1);
        assert!(current);
    }

    #[test]
    fn an_empty_value_round_trips() {
        let s = sealer(vec![key("k1", 1)]);
        let set = s.seal(b"", None, 0).unwrap();
        assert_eq!(valid(s.open(&request(&cookie_header(&set)))).0, b"");
    }

    #[test]
    fn a_20_kb_value_is_split_into_chunks_that_join_back() {
        let s = sealer(vec![key("k1", 1)]);
        let plaintext: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let set = s.seal(&plaintext, Some(Duration::from_secs(60)), 0).unwrap();
        // 20 000 + 28 bytes in base64 is 26 705 characters: 8 chunks of 3800.
        assert_eq!(set.len(), 8);
        assert!(set[0].starts_with("sess=v1.8.k1."));
        for (i, c) in set.iter().enumerate().skip(1) {
            assert!(c.starts_with(&format!("sess_{i}=")), "{c}");
        }
        for c in &set[..7] {
            assert_eq!(value_of(c).len(), 3800);
        }
        let (opened, chunks, _) = valid(s.open(&request(&cookie_header(&set))));
        assert_eq!(opened, plaintext);
        assert_eq!(chunks, 8);
    }

    #[test]
    fn chunks_are_found_across_several_cookie_headers_in_any_order() {
        let s = CookieSealer::builder("sess", vec![key("k1", 1)])
            .chunk_size(100)
            .build()
            .unwrap();
        let set = s.seal(&[7u8; 300], None, 0).unwrap();
        assert_eq!(set.len(), 5);
        let mut req = OwnedRequest::get("/");
        for c in set.iter().rev() {
            req = req.header("cookie", c.split(';').next().unwrap());
        }
        req = req.header("cookie", "sess=spoofed-second-occurrence");
        assert_eq!(valid(s.open(&req)).0, vec![7u8; 300]);
    }

    #[test]
    fn the_value_length_counts_the_digits_of_the_chunk_count() {
        // Across the step from 9 to 10 chunks the count gains a digit: the
        // announced count is always the number of chunks the value fills.
        for body_len in 1..2000 {
            let (n, total) = chunk_count(2, body_len, 64, 64).unwrap();
            assert_eq!(n, total.div_ceil(64), "body {body_len}");
            assert_eq!(total, 3 + decimal_digits(n) + 1 + 2 + 1 + body_len);
        }
        assert_eq!(chunk_count(2, 64 * 64, 64, 64), None);
    }

    #[test]
    fn a_value_needing_more_than_max_chunks_is_too_large() {
        let s = CookieSealer::builder("sess", vec![key("k1", 1)])
            .max_chunks(2)
            .chunk_size(100)
            .build()
            .unwrap();
        assert!(s.seal(&[0u8; 100], None, 0).is_ok());
        match s.seal(&[0u8; 200], None, 0) {
            Err(SealError::TooLarge { len, max }) => {
                assert_eq!(max, 200);
                assert!(len > 200, "{len}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_older_listed_key_still_opens_and_asks_for_a_reseal() {
        let old = sealer(vec![key("old", 1)]);
        let set = old.seal(b"v", None, 0).unwrap();
        let rotated = sealer(vec![key("new", 2), key("old", 1)]);
        let (plaintext, _, current) = valid(rotated.open(&request(&cookie_header(&set))));
        assert_eq!(plaintext, b"v");
        assert!(!current);
        assert_eq!(rotated.current_key_id(), "new");
        let resealed = rotated.seal(&plaintext, None, 1).unwrap();
        assert!(resealed[0].starts_with("sess=v1.1.new."));
        assert!(valid(rotated.open(&request(&cookie_header(&resealed)))).2);
    }

    #[test]
    fn a_key_no_longer_listed_is_unknown() {
        let old = sealer(vec![key("old", 1)]);
        let set = old.seal(b"v", None, 0).unwrap();
        let rotated = sealer(vec![key("new", 2)]);
        let opened = rotated.open(&request(&cookie_header(&set)));
        assert_eq!(invalid(&opened), InvalidCookie::UnknownKey);
    }

    #[test]
    fn changing_any_sealed_byte_is_tampering() {
        let s = sealer(vec![key("k1", 1)]);
        let set = s.seal(b"some session", None, 0).unwrap();
        let value = value_of(&set[0]);
        let (head, body) = value.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let forged = format!("sess={head}.{}", URL_SAFE_NO_PAD.encode(&changed));
            assert_eq!(
                invalid(&s.open(&request(&forged))),
                InvalidCookie::Tampered,
                "byte {i}"
            );
        }
    }

    #[test]
    fn changing_any_character_never_opens() {
        let s = sealer(vec![key("k1", 1), key("k2", 1)]);
        let set = s.seal(b"some session", None, 0).unwrap();
        let value = value_of(&set[0]).to_owned();
        for i in 0..value.len() {
            for replacement in [b'A', b'k', b'2', b'.', b'-', b'_', b'0', b'=', b' '] {
                let mut bytes = value.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                let forged = String::from_utf8(bytes).unwrap();
                match s.open(&request(&format!("sess={forged}"))) {
                    Opened::Valid { .. } => panic!("{forged} opened"),
                    Opened::Invalid { .. } | Opened::Absent => {}
                }
            }
        }
    }

    #[test]
    fn relabelling_with_another_listed_key_id_is_tampering() {
        // Same key bytes under two ids: only the additional data differs.
        let s = sealer(vec![key("k1", 1), key("k2", 1)]);
        let set = s.seal(b"v", None, 0).unwrap();
        let relabelled = value_of(&set[0]).replacen(".k1.", ".k2.", 1);
        let opened = s.open(&request(&format!("sess={relabelled}")));
        assert_eq!(invalid(&opened), InvalidCookie::Tampered);
    }

    #[test]
    fn a_value_moved_to_another_cookie_name_does_not_open() {
        let a = sealer(vec![key("k1", 1)]);
        let b = CookieSealer::new("other", vec![key("k1", 1)]).unwrap();
        let set = a.seal(b"v", None, 0).unwrap();
        let moved = format!("other={}", value_of(&set[0]));
        assert_eq!(invalid(&b.open(&request(&moved))), InvalidCookie::Tampered);
    }

    #[test]
    fn a_missing_chunk_is_reported_with_the_chunks_carried() {
        let s = CookieSealer::builder("sess", vec![key("k1", 1)])
            .chunk_size(100)
            .build()
            .unwrap();
        let set = s.seal(&[1u8; 250], None, 0).unwrap();
        assert_eq!(set.len(), 4);
        let without_second: Vec<String> = set
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, c)| c.clone())
            .collect();
        let opened = s.open(&request(&cookie_header(&without_second)));
        assert_eq!(invalid(&opened), InvalidCookie::MissingChunk);
        assert!(matches!(opened, Opened::Invalid { chunks: 4, .. }));
        let without_first = cookie_header(&set[1..]);
        let opened = s.open(&request(&without_first));
        assert_eq!(invalid(&opened), InvalidCookie::MissingChunk);
    }

    #[test]
    fn more_chunks_than_the_maximum_are_too_large() {
        let big = CookieSealer::builder("sess", vec![key("k1", 1)])
            .chunk_size(100)
            .build()
            .unwrap();
        let set = big.seal(&[1u8; 500], None, 0).unwrap();
        assert!(set.len() > 3);
        let small = CookieSealer::builder("sess", vec![key("k1", 1)])
            .chunk_size(100)
            .max_chunks(3)
            .build()
            .unwrap();
        let header = cookie_header(&set);
        assert_eq!(invalid(&small.open(&request(&header))), InvalidCookie::TooLarge);
        // A one-chunk value over the total is too large as well.
        let long = format!("sess=v1.1.k1.{}", "A".repeat(400));
        assert_eq!(invalid(&small.open(&request(&long))), InvalidCookie::TooLarge);
        let count = format!("sess=v1.9.k1.{}", "A".repeat(40));
        assert_eq!(invalid(&small.open(&request(&count))), InvalidCookie::TooLarge);
    }

    #[test]
    fn sealing_fewer_chunks_removes_the_stale_ones() {
        let s = CookieSealer::builder("sess", vec![key("k1", 1)])
            .chunk_size(100)
            .build()
            .unwrap();
        let set = s.seal(&[1u8; 50], None, 4).unwrap();
        assert_eq!(set.len(), 4);
        assert!(set[0].starts_with("sess=v1.2.k1."), "{}", set[0]);
        assert!(set[1].starts_with("sess_1=") && !set[1].contains("Max-Age=0"));
        assert_eq!(
            set[2],
            "sess_2=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            set[3],
            "sess_3=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(s.seal(&[1u8; 50], None, 1).unwrap().len(), 2);
    }

    #[test]
    fn set_cookie_carries_the_configured_attributes() {
        let s = sealer(vec![key("k1", 1)]);
        let set = s.seal(b"v", Some(Duration::from_millis(1500)), 0).unwrap();
        let attributes = set[0].split_once(';').unwrap().1;
        assert_eq!(attributes, " Path=/; Max-Age=2; HttpOnly; Secure; SameSite=Lax");
        let dev = CookieSealer::builder("sess", vec![key("k1", 1)])
            .secure(false)
            .path("/app")
            .same_site(SameSite::Strict)
            .build()
            .unwrap();
        let set = dev.seal(b"v", None, 0).unwrap();
        assert_eq!(
            set[0].split_once(';').unwrap().1,
            " Path=/app; HttpOnly; SameSite=Strict"
        );
        let cross = CookieSealer::builder("sess", vec![key("k1", 1)])
            .same_site(SameSite::None)
            .build()
            .unwrap();
        assert!(cross.seal(b"v", None, 0).unwrap()[0].ends_with("; HttpOnly; Secure; SameSite=None"));
        assert_eq!(
            s.clear(3),
            [
                "sess=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
                "sess_1=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
                "sess_2=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
            ]
        );
        assert_eq!(s.clear(0).len(), 1);
    }

    #[test]
    fn settings_browsers_would_refuse_are_errors() {
        let build = |b: fn(CookieSealerBuilder) -> CookieSealerBuilder, name: &str| {
            b(CookieSealer::builder(name, vec![key("k1", 1)]))
                .build()
                .map(|_| ())
        };
        let same = |b: CookieSealerBuilder| b;
        assert!(matches!(
            build(|b| b.secure(false).same_site(SameSite::None), "s"),
            Err(KeyError::SameSiteNoneWithoutSecure)
        ));
        assert!(matches!(
            build(|b| b.secure(false), "__Host-s"),
            Err(KeyError::PrefixNotHonoured(_))
        ));
        assert!(matches!(
            build(|b| b.path("/a"), "__Host-s"),
            Err(KeyError::PrefixNotHonoured(_))
        ));
        assert!(matches!(
            build(|b| b.secure(false), "__secure-s"),
            Err(KeyError::PrefixNotHonoured(_))
        ));
        assert!(build(same, "__Host-s").is_ok());
        for name in ["", "a b", "a;b", "a=b", "é", &"n".repeat(129)] {
            assert!(
                matches!(build(same, name), Err(KeyError::InvalidName(_))),
                "{name:?}"
            );
        }
        for path in ["", "app", "/a;b", "/a b", "/é", "/a\n"] {
            let b = CookieSealer::builder("s", vec![key("k1", 1)]).path(path);
            assert!(matches!(b.build(), Err(KeyError::InvalidPath(_))), "{path:?}");
        }
        assert!(matches!(
            build(|b| b.max_chunks(0), "s"),
            Err(KeyError::InvalidLimits)
        ));
        assert!(matches!(
            build(|b| b.max_chunks(65), "s"),
            Err(KeyError::InvalidLimits)
        ));
        assert!(matches!(
            build(|b| b.chunk_size(63), "s"),
            Err(KeyError::InvalidLimits)
        ));
        assert!(matches!(
            build(|b| b.chunk_size(4001), "s"),
            Err(KeyError::InvalidLimits)
        ));
        assert!(matches!(CookieSealer::new("s", vec![]), Err(KeyError::NoKeys)));
        assert!(matches!(
            CookieSealer::new("s", vec![key("a", 1), key("b", 2), key("a", 3)]),
            Err(KeyError::DuplicateId(id)) if id == "a"
        ));
    }

    #[test]
    fn cookie_pairs_are_parsed_leniently_and_the_first_occurrence_wins() {
        let s = sealer(vec![key("k1", 1)]);
        let set = s.seal(b"v", None, 0).unwrap();
        let value = value_of(&set[0]);
        let header = format!("sessx=1;;  flag; sess =\t\"{value}\" ;sess=other");
        assert_eq!(valid(s.open(&request(&header))).0, b"v");
        assert!(matches!(
            s.open(&request("sessx=1; xsess=2; sess_1x=3")),
            Opened::Absent
        ));
        assert!(matches!(s.open(&OwnedRequest::get("/")), Opened::Absent));
        let opened = s.open(&request("sess=v1.1.k1.@@@"));
        assert_eq!(invalid(&opened), InvalidCookie::Malformed);
        let not_utf8 = OwnedRequest::get("/").header("cookie", b"sess=\xff\xfe".to_vec());
        assert_eq!(invalid(&s.open(&not_utf8)), InvalidCookie::Malformed);
    }

    #[test]
    fn raw_borrows_a_single_chunk_and_open_raw_opens_it() {
        let s = sealer(vec![key("new", 2), key("old", 1)]);
        let old = sealer(vec![key("old", 1)]);
        let set = old.seal(b"cached", None, 0).unwrap();
        let req = request(&cookie_header(&set));
        let RawCookie::Present { value, chunks } = s.raw(&req) else {
            panic!("absent")
        };
        assert!(matches!(value, Cow::Borrowed(_)));
        assert_eq!(chunks, 1);
        let unsealed = s.open_raw(&value).unwrap();
        assert_eq!(unsealed.plaintext, b"cached");
        assert!(!unsealed.current_key);
        assert_eq!(s.open_raw("v1.1.new.AAAA").err(), Some(InvalidCookie::Malformed));
        assert_eq!(s.open_raw("v2.1.new.AAAA").err(), Some(InvalidCookie::Malformed));
        assert_eq!(s.open_raw("v1.01.new.AAAA").err(), Some(InvalidCookie::Malformed));
        assert_eq!(
            s.open_raw("v1.1.gone.AAAA").err(),
            Some(InvalidCookie::UnknownKey)
        );
    }

    #[test]
    fn debug_shows_no_key_value_or_plaintext() {
        let k = CookieKey::new("visible-id", &[0xAB; 32]).unwrap();
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "CookieKey { id: \"visible-id\", .. }");
        let s = sealer(vec![k]);
        let dbg = format!("{s:?}");
        assert!(
            dbg.contains("visible-id") && !dbg.to_lowercase().contains("abab"),
            "{dbg}"
        );
        let set = s.seal(b"top-secret-plaintext", None, 0).unwrap();
        let req = request(&cookie_header(&set));
        let value = value_of(&set[0]);
        for dbg in [format!("{:?}", s.open(&req)), format!("{:?}", s.raw(&req))] {
            assert!(
                !dbg.contains("top-secret") && !dbg.contains(&value[14..]),
                "{dbg}"
            );
        }
        let dbg = format!("{:?}", s.open_raw(value).unwrap());
        assert!(!dbg.contains("top-secret"), "{dbg}");
        let builder = CookieSealer::builder("s", vec![key("b", 0xCD)]);
        assert!(!format!("{builder:?}").to_lowercase().contains("cdcd"));
    }

    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("palisade-cookie-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Whether two keys are the same: one opens what the other sealed.
    fn same_key(a: CookieKey, b: CookieKey) -> bool {
        let set = sealer(vec![a]).seal(b"x", None, 0).unwrap();
        matches!(
            sealer(vec![b]).open(&request(&cookie_header(&set))),
            Opened::Valid { .. }
        )
    }

    #[test]
    fn key_text_is_hex_or_any_base64_and_white_space_is_ignored() {
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(250)).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let forms = [
            format!("{hex}\n"),
            format!("  {}\n", hex.to_uppercase()),
            STANDARD.encode(&bytes),
            STANDARD_NO_PAD.encode(&bytes),
            format!("{}\r\n", URL_SAFE.encode(&bytes)),
            URL_SAFE_NO_PAD.encode(&bytes),
        ];
        for form in &forms {
            let k = CookieKey::from_text("k", form).unwrap();
            assert!(same_key(k, CookieKey::new("k", &bytes).unwrap()), "{form}");
        }
        assert!(matches!(
            CookieKey::from_text("k", &STANDARD.encode([1u8; 16])),
            Err(KeyError::WrongLength { len: 16, .. })
        ));
        assert!(matches!(
            CookieKey::from_text("k", "not a key!"),
            Err(KeyError::NotKeyText { .. })
        ));
        assert!(matches!(
            CookieKey::from_text("bad id", &hex),
            Err(KeyError::InvalidId(_))
        ));
    }

    #[test]
    fn key_files_hold_raw_bytes_or_text_and_errors_name_the_file_only() {
        let mut raw = [0u8; 32];
        raw[0] = 0xff; // not text
        raw[5] = b'\n';
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let reference = || CookieKey::new("k", &raw).unwrap();
        for (file, content) in [
            ("raw", raw.to_vec()),
            ("hex", format!("{hex}\n").into_bytes()),
            ("b64", format!("{}\n", STANDARD.encode(raw)).into_bytes()),
        ] {
            let path = temp_file(file, &content);
            assert!(
                same_key(CookieKey::from_file("k", &path).unwrap(), reference()),
                "{file}"
            );
        }
        let short = temp_file("short", &[0xAA; 31]);
        let err = CookieKey::from_file("k", &short).unwrap_err();
        assert!(
            matches!(&err, KeyError::KeyFile { problem, .. } if matches!(**problem, KeyError::WrongLength { len: 31, .. }))
        );
        let message = err.to_string();
        assert!(
            message.contains(&short.display().to_string()) && message.contains("31 bytes"),
            "{message}"
        );
        // 32 printable characters without white space: the raw key (said
        // in a warning).
        let printable = temp_file("printable", b"0123456789abcdef0123456789abcdef");
        assert!(same_key(
            CookieKey::from_file("k", &printable).unwrap(),
            CookieKey::new("k", b"0123456789abcdef0123456789abcdef").unwrap()
        ));
        // 32 bytes of text with white space read as a pass phrase, not as
        // a raw key.
        let password = temp_file("password", b"correct horse battery staple 12\n");
        let err = CookieKey::from_file("k", &password).unwrap_err().to_string();
        assert!(
            err.contains("neither 64 hex digits nor base64") && !err.contains("horse"),
            "{err}"
        );
        let missing = CookieKey::from_file("k", "/nonexistent/cookie.key").unwrap_err();
        assert!(matches!(missing, KeyError::ReadFile { .. }));
        assert!(missing.to_string().contains("/nonexistent/cookie.key"));
        // The cause is said once: in the message, not again as a source
        // (anyhow's `{:#}` prints both), nor by the error that wraps it.
        assert!(missing.to_string().contains("No such file"), "{missing}");
        assert!(std::error::Error::source(&missing).is_none());
        let wrapped = crate::SignInError::from(missing);
        assert!(std::error::Error::source(&wrapped).is_none());
        assert_eq!(
            wrapped.to_string().matches("No such file").count(),
            1,
            "{wrapped}"
        );
        let wrong = CookieKey::new("k", &[0u8; 16]).unwrap_err();
        assert!(matches!(wrong, KeyError::WrongLength { len: 16, .. }));
        std::fs::remove_dir_all(short.parent().unwrap()).unwrap();
    }

    #[test]
    fn key_ids_are_checked() {
        for id in ["", "a.b", "a b", "ü", &"x".repeat(33)] {
            assert!(
                matches!(CookieKey::generate(id), Err(KeyError::InvalidId(_))),
                "{id:?}"
            );
        }
        let a = CookieKey::generate("A_z-09").unwrap();
        let b = CookieKey::generate("A_z-09").unwrap();
        assert_eq!(a.id(), "A_z-09");
        assert!(!same_key(a, b), "two generated keys are equal");
    }

    fn fuzz_sealer() -> CookieSealer {
        CookieSealer::builder("s", vec![key("k1", 1), key("k2", 2)])
            .chunk_size(64)
            .max_chunks(4)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn any_cookie_header_opens_without_panicking(header in proptest::collection::vec(any::<u8>(), 0..400)) {
            let s = fuzz_sealer();
            let req = OwnedRequest::get("/").header("cookie", header.clone());
            let _ = s.open(&req);
            if let Ok(text) = std::str::from_utf8(&header) {
                let _ = s.open_raw(text);
            }
        }

        #[test]
        fn structured_garbage_opens_without_panicking(
            count in "[0-9]{0,4}",
            id in "[a-z0-9]{0,3}",
            body in "[A-Za-z0-9_=.-]{0,120}",
            extra in proptest::collection::vec(("[0-9]{1,2}", "[ -~]{0,80}"), 0..5),
        ) {
            let s = fuzz_sealer();
            let mut header = format!("s=v1.{count}.{id}.{body}");
            for (i, v) in &extra {
                header.push_str(&format!("; s_{i}={v}"));
            }
            let _ = s.open(&request(&header));
        }

        #[test]
        fn a_mutated_sealed_cookie_never_opens(
            plaintext in proptest::collection::vec(any::<u8>(), 0..150),
            position in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let s = fuzz_sealer();
            let set = s.seal(&plaintext, None, 0).unwrap();
            let mut header = cookie_header(&set).into_bytes();
            let (opened, _, _) = valid(s.open(&request(std::str::from_utf8(&header).unwrap())));
            prop_assert_eq!(opened, plaintext);
            // Mutate a byte of the first value, past `s=v1.`.
            let value_len = value_of(&set[0]).len();
            let i = 5 + position % (value_len - 3);
            prop_assume!(header[i] != byte);
            header[i] = byte;
            let req = OwnedRequest::get("/").header("cookie", header);
            let opened = matches!(s.open(&req), Opened::Valid { .. });
            prop_assert!(!opened, "a mutated cookie opened");
        }
    }
}
