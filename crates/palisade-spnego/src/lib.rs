//! SPNEGO / Kerberos (HTTP `Negotiate`) authentication for Palisade: Active
//! Directory and MIT Kerberos users are recognised from their tickets, as
//! Apache's mod_auth_gssapi and Spring Security Kerberos do, in the same
//! pipeline as JWTs, so policy treats a Kerberos user like a JWT user.
//!
//! ```no_run
//! use palisade_spnego::SpnegoAuthenticator;
//! // The keytab comes from KRB5_KTNAME (set it before the program starts:
//! // the Kerberos library reads it from the process environment).
//! let spnego = SpnegoAuthenticator::builder()
//!     .allowed_realm("EXAMPLE.TEST")
//!     .build()?;
//! let guard = palisade_core::Guard::builder().authenticator(spnego).build()?;
//! # let _ = guard;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - Kerberos only: the acceptor's credentials are restricted to the krb5
//!   mechanism, NTLM (`TlRMTVNT…`), NegoEx and SPNEGO offers that prefer
//!   another mechanism are refused before GSSAPI sees them, and the
//!   mechanism of an established context is checked to be Kerberos.
//! - One round trip per request; no half-open context is kept. The
//!   mutual-authentication token goes back as `WWW-Authenticate: Negotiate
//!   <token>` on the successful response.
//! - Accepting a token is CPU work in GSSAPI (decrypting the ticket and
//!   authenticator, recording it in the replay cache; no KDC round trip),
//!   70–300 µs. On a multi-threaded tokio runtime (axum's) it runs on the
//!   request's own worker, as any CPU work of that size does (the worker's
//!   queued tasks are taken by the others meanwhile); on a single-threaded
//!   one (actix-web's), where it would hold up every connection of the
//!   worker, on tokio's blocking pool. At most
//!   [`SpnegoAuthenticatorBuilder::concurrency`] run at a time (beyond
//!   that they wait, on the pool); counted and timed
//!   ([`SpnegoAuthenticator::stats`]).
//! - Replay protection is MIT's replay cache, on; its directory is
//!   `KRB5RCACHEDIR`, else `TMPDIR`, else `/var/tmp` (or a `file2:` cache's,
//!   from krb5.conf); one that cannot be written in fails `build()`. A
//!   replayed token is refused.
//! - Bad input (an oversized header, bad base64, malformed ASN.1, a token
//!   for another service, a clock-skewed ticket) is a 401 with
//!   `WWW-Authenticate: Negotiate`; the GSSAPI error is logged, never sent:
//!   at debug level, but for causes of this server's (its keytab, its
//!   clock, its replay cache) and NTLM answers, said at `WARN` once a
//!   minute for each.

mod keytab;
mod profile;
mod session;
mod token;

pub use session::{SessionCookie, SessionKeyError};
pub use token::TokenKind;

/// What a decoded Negotiate token is, as Palisade sees it before GSSAPI
/// does (for diagnostics and fuzzing): only [`TokenKind::SpnegoKerberos`]
/// and [`TokenKind::Kerberos`] are ever handed to GSSAPI.
#[must_use]
pub fn inspect_token(token: &[u8]) -> TokenKind {
    token::classify(token)
}

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libgssapi::context::{CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, OidSet};
use palisade_core::authn::{AuthOutcome, Authenticated, Authenticator, RequestHead};
use palisade_core::policy::{FromPolicy, NEGOTIATE_COOKIE, PolicyError, WorkloadPolicy};
use palisade_core::{Check, ErrorKind, Identity, KerberosIdentity, Rejection, Verification};
use tokio::sync::Semaphore;

use crate::token::{TokenKind as Kind, classify};

/// Log target.
pub const LOG_TARGET: &str = "palisade::spnego";

/// The largest `Authorization` header accepted (large Windows tokens with
/// many group SIDs fit).
pub const DEFAULT_MAX_HEADER: usize = 64 * 1024;

/// How long a ticket waits for a GSSAPI permit by default
/// ([`SpnegoAuthenticatorBuilder::queue_timeout`]).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpnegoError {
    /// The acceptor credentials could not be acquired (no keytab, no key for
    /// the service principal, unreadable keytab).
    #[error("cannot acquire Kerberos acceptor credentials{}: {message} (is KRB5_KTNAME set to a readable keytab{}?)", principal.as_deref().map(|p| format!(" for {p}")).unwrap_or_default(), if principal.is_none() { " with an `HTTP/…` key; for another service, name it with `service`" } else { "" })]
    Credentials {
        /// The service principal asked for, if any.
        principal: Option<String>,
        /// GSSAPI's message.
        message: String,
    },
    /// A session cookie was configured without a key.
    #[error("the session cookie needs at least one key")]
    SessionKeys,
    /// The session cookie's name is not a cookie name
    /// ([`palisade_core::syntax::is_cookie_name`]): it could end the name
    /// or add an attribute to `Set-Cookie`.
    #[error("the session cookie's name {0:?} is refused: {rule}", rule = palisade_core::syntax::COOKIE_NAME_RULE)]
    SessionCookieName(String),
    /// The environment (`KRB5RCACHETYPE=none`, `KRB5RCACHENAME=none:…`) or,
    /// when it names no cache, the Kerberos profile (`[libdefaults]
    /// default_rcache_name = none:` in `KRB5_CONFIG`'s files or
    /// `/etc/krb5.conf`, or a file they include) turns MIT's replay cache
    /// off: a captured token could be replayed.
    #[error("the Kerberos replay cache is off ({0}); Palisade does not accept Negotiate without it")]
    ReplayCacheOff(String),
    /// The directory MIT's replay cache is written in cannot be written:
    /// every ticket would be refused (a read-only file system, a directory
    /// that does not exist or is another user's).
    #[error("the Kerberos replay cache cannot be written in {} ({from}): {message}; every ticket would be refused: set KRB5RCACHEDIR to a writable directory on local storage", dir.display())]
    ReplayCacheUnwritable {
        /// The directory.
        dir: std::path::PathBuf,
        /// Where its place comes from (`KRB5RCACHEDIR`, MIT's default).
        from: String,
        /// Why it cannot be written.
        message: String,
    },
    /// A token for an outbound call could not be made (no ticket for the
    /// service, the KDC refused the impersonation or the delegation).
    #[error("cannot make a Kerberos token for {service}: {message}")]
    Initiate {
        /// The host-based service asked for (`HTTP@backend.example.test`).
        service: String,
        /// GSSAPI's message (its major status's and the mechanism's).
        message: String,
        /// GSSAPI's minor status: the mechanism's own code (MIT Kerberos's
        /// `krb5_error_code`, as an `OM_uint32`).
        minor: u32,
    },
    /// An upstream called with a Kerberos ticket did not prove that it is
    /// the service the ticket is for (RFC 4559 §5: its answer carries no
    /// mutual-authentication token, or one that does not check).
    #[error("{service} did not prove its identity: {reason}")]
    Unproven {
        /// The host-based service the ticket was for.
        service: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl SpnegoError {
    /// An outbound token for `service` GSSAPI could not make.
    fn initiate(service: &str, e: &libgssapi::error::Error) -> Self {
        Self::Initiate {
            service: service.to_owned(),
            message: e.to_string(),
            minor: e.minor,
        }
    }

    /// Whether no KDC of the realm could be reached for an outbound token
    /// ([`Initiate`](Self::Initiate) with MIT's `KRB5_KDC_UNREACH`, "Cannot
    /// contact any KDC for requested realm", or `KRB5_REALM_CANT_RESOLVE`,
    /// its addresses not resolved): an outage, where the KDC's refusal (no
    /// such principal, delegation not allowed) is an answer.
    #[must_use]
    pub fn is_kdc_unreachable(&self) -> bool {
        /// MIT's error codes (`krb5.h`), as GSSAPI's minor status carries them.
        const KRB5_KDC_UNREACH: i32 = -1_765_328_228;
        const KRB5_REALM_CANT_RESOLVE: i32 = -1_765_328_164;
        match self {
            Self::Initiate { minor, .. } => {
                // The minor status is an `OM_uint32` holding the `krb5_error_code`'s bits.
                let code = i32::from_ne_bytes(minor.to_ne_bytes());
                code == KRB5_KDC_UNREACH || code == KRB5_REALM_CANT_RESOLVE
            }
            _ => false,
        }
    }
}

type Mapper = Arc<dyn Fn(&KerberosIdentity) -> (Vec<String>, Vec<String>) + Send + Sync>;

/// Builds a [`SpnegoAuthenticator`].
#[must_use]
pub struct SpnegoAuthenticatorBuilder {
    session: Option<SessionCookie>,
    service: Option<String>,
    allowed_realms: Vec<String>,
    concurrency: usize,
    max_header: usize,
    mapper: Option<Mapper>,
    delegation: bool,
    queue_timeout: Duration,
}

impl fmt::Debug for SpnegoAuthenticatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpnegoAuthenticatorBuilder")
            .field("service", &self.service)
            .field("allowed_realms", &self.allowed_realms)
            .field("concurrency", &self.concurrency)
            .field("max_header", &self.max_header)
            .field("mapper", &self.mapper.as_ref().map(|_| "<fn>"))
            .field("session", &self.session)
            .field("delegation", &self.delegation)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

impl SpnegoAuthenticatorBuilder {
    /// Issue a session cookie after a successful Negotiate, and accept it
    /// instead of a ticket until it expires (mod_auth_gssapi's
    /// `GssapiUseSessions`).
    pub fn session_cookie(mut self, cookie: SessionCookie) -> Self {
        self.session = Some(cookie);
        self
    }

    /// Accept only for this host-based service (`HTTP@www.example.test`).
    /// By default a ticket for any `HTTP/…` principal in the keytab is
    /// accepted (a host known by several names has one for each), and a
    /// ticket for another service the keytab holds a key of (`host/…`,
    /// `cifs/…`) is refused: naming it here is how to accept it.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// Keep the ticket-granting ticket a client forwards (`curl
    /// --delegation always`, a browser allowed to delegate to this host) as
    /// the request's [`DelegatedCredential`] attachment, for calls on its
    /// behalf. Off by default: a forwarded ticket is the user's whole
    /// identity in the realm, and is dropped with the context unless the
    /// service says it calls on with it (mod_auth_gssapi keeps none either
    /// without `GssapiDelegCcacheDir`). S4U needs no forwarded ticket.
    pub fn accept_delegation(mut self) -> Self {
        self.delegation = true;
        self
    }

    /// Accept clients of this realm (any number; none: every realm the KDC
    /// trusts). With one realm, a one-part principal's local name is the
    /// principal without it (`alice@EXAMPLE.TEST` is `alice`; `alice/admin`
    /// has none); with several, or none, krb5's `aname_to_localname` rules
    /// decide, as mod_auth_gssapi's `GssapiLocalName`, so `alice@A` and
    /// `alice@B` are not both `alice`.
    pub fn allowed_realm(mut self, realm: impl Into<String>) -> Self {
        self.allowed_realms.push(realm.into());
        self
    }

    /// How long a ticket may wait for one of the [`concurrency`](Self::concurrency)
    /// permits (default 10 s); then the request is answered `503` with
    /// `Retry-After: 1`, whatever the policy: a KDC-side stall (a slow
    /// replay-cache disk) or a flood of tickets sheds load instead of
    /// holding every request that brings one. A ticket that finds a permit
    /// free does not wait.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// At most this many GSSAPI calls at once (default: 4 × the CPUs),
    /// counted across the authenticators of the same concurrency alive in
    /// the process: a reload's new authenticator shares them with the one
    /// it replaces, whose stalled calls still hold theirs.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The largest `Authorization` header accepted (default 64 KiB).
    pub fn max_header(mut self, bytes: usize) -> Self {
        self.max_header = bytes;
        self
    }

    /// Maps a principal to (roles, groups), which policies see as
    /// `request.auth.claims[roles]`/`[groups]` and role requirements as
    /// realm roles.
    pub fn map_roles(
        mut self,
        f: impl Fn(&KerberosIdentity) -> (Vec<String>, Vec<String>) + Send + Sync + 'static,
    ) -> Self {
        self.mapper = Some(Arc::new(f));
        self
    }

    /// [`build`](Self::build)s it, a failure named as the policy file's
    /// errors are: the workload's `SpnegoSettings` document (or the file),
    /// with the [`SpnegoError`] as its [`cause`](PolicyError::cause). For a builder configured
    /// [`settings_from`](Self::settings_from) the file and then in code (a role-mapping
    /// hook, [`accept_delegation`](Self::accept_delegation)).
    ///
    /// # Errors
    /// As [`build`](Self::build), in a [`PolicyError`].
    pub fn build_for(self, policy: &WorkloadPolicy<'_>) -> Result<SpnegoAuthenticator, PolicyError> {
        self.build().map_err(|e| {
            let err = match policy.spnego_settings().next() {
                Some((doc, _)) => policy.error_at(doc, "spec", e.to_string()),
                None => PolicyError::new(policy.source(), e.to_string()),
            };
            err.with_source(e)
        })
    }

    /// Acquires the acceptor credentials (once; they are reused).
    ///
    /// # Errors
    /// [`SpnegoError::Credentials`] when there is no usable keytab;
    /// [`SpnegoError::ReplayCacheOff`] when the replay cache is turned off,
    /// [`SpnegoError::ReplayCacheUnwritable`] when its directory cannot be
    /// written in;
    /// [`SpnegoError::SessionKeys`] for a session cookie without a key,
    /// [`SpnegoError::SessionCookieName`] for one whose name is not a
    /// cookie name.
    pub fn build(self) -> Result<SpnegoAuthenticator, SpnegoError> {
        if self.delegation && self.session.is_some() {
            // The cookie stands for the ticket on later requests, and
            // carries no forwarded ticket.
            palisade_core::config_warning!(
                target: LOG_TARGET,
                "a Negotiate session cookie and delegation together: only the request that brought the ticket carries the delegated credential; requests authenticated by the cookie have none (calls on the user's behalf then fail, or use S4U)"
            );
        }
        if let Some(s) = &self.session {
            if !s.has_keys() {
                return Err(SpnegoError::SessionKeys);
            }
            if !palisade_core::syntax::is_cookie_name(&s.name) {
                return Err(SpnegoError::SessionCookieName(s.name.clone()));
            }
        }
        // Wherever MIT would read it: the environment, else the profile.
        let env = |var: &str| std::env::var(var).ok();
        if let Some(off) = profile::replay_cache_off(&env) {
            return Err(SpnegoError::ReplayCacheOff(off));
        }
        // MIT opens its replay cache at the first accept: a directory it
        // cannot write in would refuse every ticket then, logged once a
        // minute; said here, at start-up, instead.
        if let Some((dir, from)) = profile::replay_cache_dir(&env) {
            profile::writable(&dir).map_err(|e| SpnegoError::ReplayCacheUnwritable {
                dir,
                from,
                message: e.to_string(),
            })?;
        }
        let err = |e: libgssapi::error::Error| SpnegoError::Credentials {
            principal: self.service.clone(),
            message: e.to_string(),
        };
        // SPNEGO over Kerberos: MIT's SPNEGO layer unwraps the browser's
        // NegTokenInit; what it may negotiate is limited by the token check
        // before GSSAPI (Kerberos must be the preferred mechanism, NTLM and
        // NegoEx never pass) and by the mechanism check after it.
        let mut mechs = OidSet::new();
        mechs.add(GSS_MECH_SPNEGO).map_err(err)?;
        mechs.add(GSS_MECH_KRB5).map_err(err)?;
        let name = match &self.service {
            Some(s) => Name::new(s.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
                .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
                .map_err(err)?,
            // The service without a host: MIT accepts with every `HTTP/…`
            // key of the keytab, and tries no other. (With no name at all
            // it tries every entry, and a computer account's keytab, whose
            // `host/…` and `HTTP/…` share one key, would answer for the
            // first that decrypts.)
            None => Name::new(b"HTTP@", Some(GSS_NT_HOSTBASED_SERVICE)).map_err(err)?,
        };
        // One credential per GSSAPI call at once (up to a bound): MIT holds
        // a credential's lock for a whole accept (`kg_cred_resolve`), so
        // calls sharing one would run one at a time.
        let acquire = || Cred::acquire(Some(&name), None, CredUsage::Accept, Some(&mechs)).map_err(err);
        // Said first: most useful when the acquisition fails.
        said_what_the_keytab_holds(&env, self.service.as_deref());
        let first = acquire()?;
        let mut creds = vec![first.clone()];
        for _ in 1..self.concurrency.min(MAX_ACCEPTOR_CREDS) {
            creds.push(acquire()?);
        }
        Ok(SpnegoAuthenticator(Arc::new(Inner {
            cred: Pool::new(first, creds),
            delegation: self.delegation,
            queue_timeout: self.queue_timeout,
            http_only: self.service.is_none(),
            permits: shared_permits(self.concurrency),
            allowed_realms: self.allowed_realms,
            max_header: self.max_header,
            mapper: self.mapper,
            session: self
                .session
                .map(|s| s.bound_to(self.service.as_deref().unwrap_or("HTTP@"))),
            stats: Stats::default(),
            local_names: LocalNames::default(),
            skew: profile::clock_skew(&env),
        })))
    }
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl SpnegoAuthenticatorBuilder {
    /// Applies the workload's `SpnegoSettings` document (at most one): the
    /// builder step that takes the file's settings, before those made in
    /// code (a role-mapping hook), then [`build_for`](Self::build_for).
    /// (Named `from_policy` before; a `from_` name is a constructor's.)
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field of a bad value or an
    /// unreadable key file.
    pub fn settings_from(mut self, w: &WorkloadPolicy<'_>) -> Result<Self, PolicyError> {
        if let Some((doc, s)) = w.spnego_settings_checked()? {
            if let Some(svc) = &s.service {
                self = self.service(svc.clone());
            }
            for r in &s.allowed_realms {
                self = self.allowed_realm(r.clone());
            }
            if let Some(t) = s.queue_timeout {
                self = self.queue_timeout(t.get());
            }
            if let Some(n) = s.concurrency {
                self = self.concurrency(n.get());
            }
            if let Some(n) = s.max_header_size {
                self = self.max_header(n.get());
            }
            if let Some(c) = &s.session_cookie {
                let name = c.name.as_deref().unwrap_or(NEGOTIATE_COOKIE);
                let mut cookie = SessionCookie::new(name);
                for (i, k) in c.keys.iter().enumerate() {
                    let field = format!("spec.sessionCookie.keys[{i}].keyFile");
                    let bytes = std::fs::read(&k.key_file).map_err(|e| {
                        w.error_at(
                            doc,
                            &field,
                            format!(
                                "cannot read {}: {e}",
                                palisade_core::syntax::file_as_shown(&k.key_file)
                            ),
                        )
                        .with_source(e)
                    })?;
                    let key = session::parse_key(&bytes, &k.key_file).ok_or_else(|| {
                        w.error_at(doc, &field, "must hold 32 bytes: raw, 64 hex digits or base64")
                    })?;
                    cookie = cookie.key(k.id, &key).map_err(|e| {
                        w.error_at(doc, &format!("spec.sessionCookie.keys[{i}]"), e.to_string())
                    })?;
                }
                if let Some(age) = c.max_age {
                    cookie = cookie.max_age(age.get());
                }
                if c.insecure_over_http {
                    cookie = cookie.insecure_over_http();
                }
                self = self.session_cookie(cookie);
            }
            if s.accept_delegation {
                self = self.accept_delegation();
            }
            if !s.roles.is_empty() || !s.groups.is_empty() {
                let (roles, groups) = (s.roles.clone(), s.groups.clone());
                self = self.map_roles(move |k| {
                    (
                        table_lookup(&roles, &k.principal),
                        table_lookup(&groups, &k.principal),
                    )
                });
            }
        }
        Ok(self)
    }
}

/// The values for `principal` in a mapping table: its own entry, and the
/// `*@REALM` entry of its realm.
fn table_lookup(table: &std::collections::BTreeMap<String, Vec<String>>, principal: &str) -> Vec<String> {
    let mut out: Vec<String> = table.get(principal).cloned().unwrap_or_default();
    if let Some((_, realm)) = principal.rsplit_once('@')
        && let Some(all) = table.get(&format!("*@{realm}"))
    {
        out.extend(all.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// Counters of the GSSAPI work, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpnegoStats {
    /// Tokens handed to GSSAPI.
    pub calls: u64,
    /// Of those, refused.
    pub failures: u64,
    /// Total time inside GSSAPI.
    pub total: Duration,
    /// The longest single call.
    pub max: Duration,
}

struct Inner {
    /// The acceptor credentials, one per call at once.
    cred: Pool<Cred>,
    /// How long a ticket waits for a permit.
    queue_timeout: Duration,
    /// Keep forwarded tickets ([`SpnegoAuthenticatorBuilder::accept_delegation`]).
    delegation: bool,
    /// No service named: only tickets for `HTTP/…` principals.
    http_only: bool,
    permits: Arc<Semaphore>,
    allowed_realms: Vec<String>,
    max_header: usize,
    mapper: Option<Mapper>,
    session: Option<SessionCookie>,
    stats: Stats,
    local_names: LocalNames,
    /// The clock skew MIT's acceptor adds to a context's lifetime.
    skew: Duration,
}

/// The HTTP Negotiate (SPNEGO/Kerberos) authenticator. Cloning is an `Arc`
/// clone.
#[derive(Clone)]
pub struct SpnegoAuthenticator(Arc<Inner>);

impl fmt::Debug for SpnegoAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpnegoAuthenticator")
            .field("allowed_realms", &self.0.allowed_realms)
            .field("max_header", &self.0.max_header)
            .finish_non_exhaustive()
    }
}

/// The 401 for a Negotiate token that is not acceptable.
fn refused(detail: &'static str) -> AuthOutcome {
    AuthOutcome::Rejected(negotiate_refusal(detail))
}

/// [`refused`]'s rejection, with `WWW-Authenticate: Negotiate`, for a
/// reason to be added.
fn negotiate_refusal(detail: &'static str) -> Rejection {
    Rejection::new(ErrorKind::InvalidNegotiate, detail, vec!["Negotiate".into()])
}

/// Says at `INFO` what the acceptor's keytab holds (as `klist -kte` shows
/// it: each principal, its newest key version and that version's
/// encryption types; never a key), and at `WARN` a principal whose keys
/// are all of types current KDCs issue tickets of only when told to (DES,
/// RC4). Nothing for a keytab that is not a file or cannot be read (GSSAPI
/// has said so already).
fn said_what_the_keytab_holds(env: &dyn Fn(&str) -> Option<String>, service: Option<&str>) {
    let Some(path) = keytab::acceptor_keytab(env) else {
        return;
    };
    let Some(all) = keytab::principals(&path) else {
        return;
    };
    let listed: Vec<String> = all
        .iter()
        .map(|(principal, keys)| {
            let types: Vec<String> = keys.enctypes.iter().map(|e| keytab::enctype_name(*e)).collect();
            format!("{principal} (kvno {}: {})", keys.kvno, types.join(", "))
        })
        .collect();
    // Once for each contents: a reload that builds the same again says it
    // at `DEBUG` (`saying_again`).
    let message = format!(
        "Negotiate tickets are accepted with the keytab's keys: {} (keytab {})",
        listed.join("; "),
        path.display()
    );
    if palisade_core::logging::first_said(&message) {
        tracing::info!(target: LOG_TARGET, "{message}");
    } else {
        tracing::debug!(target: LOG_TARGET, "{message}");
    }
    // The principals this acceptor may use: the service's (`HTTP@web` is
    // `HTTP/web@…`), else every `HTTP/…` one, not a host keytab's others.
    let prefix = match service.and_then(|s| s.split_once('@')) {
        Some((svc, host)) => format!("{svc}/{host}@"),
        None => service.map_or_else(|| "HTTP/".to_owned(), |s| format!("{s}/")),
    };
    for (principal, keys) in &all {
        if principal
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase())
            && keytab::weak_only(&keys.enctypes)
        {
            palisade_core::config_warning!(
                target: LOG_TARGET,
                "the keytab {} holds only DES or RC4 keys for {principal}: tickets of AES, which current KDCs issue, cannot be decrypted with them; export its AES keys (and turn AES on for the account: msDS-SupportedEncryptionTypes)",
                path.display()
            );
        }
    }
}

/// The 401 for an answer to the Negotiate challenge that is not Kerberos:
/// NTLM (reason `ntlm`), or SPNEGO offering another mechanism first
/// (`not_kerberos`: NTLM wrapped in SPNEGO, NegoEx, or a token cut short).
/// Said at `WARN` once a minute with the host the client asked for: a
/// browser answers with NTLM when it found no Kerberos ticket for this
/// service, which, for users of the domain, is most often the service's
/// name (no `HTTP/host` principal registered, or one registered twice) or
/// a browser that does not trust the site for Negotiate.
#[cold]
#[inline(never)]
fn ntlm_offered(req: &dyn RequestHead, kind: Kind) -> AuthOutcome {
    let reason = if kind == Kind::Ntlm {
        "ntlm"
    } else {
        "not_kerberos"
    };
    palisade_core::sparse_warning!(
        target: LOG_TARGET,
        host = ?req.host().map(|h| h.chars().take(255).collect::<String>()),
        reason,
        "a client answered the Negotiate challenge with NTLM or another mechanism than Kerberos, which is refused: it found no Kerberos ticket for this service. For users of the domain, check that HTTP/<the host they asked for> is registered once, on the account whose key the keytab holds (setspn -Q), and that their browsers trust the site for Negotiate (the Local intranet zone, AuthServerAllowlist); palisade_authentication_failures_total counts them (reasons ntlm and not_kerberos); said once a minute"
    );
    AuthOutcome::Rejected(negotiate_refusal(kind.detail()).with_reason(reason))
}

/// How long the ticket behind an accepted context has left: the context's
/// lifetime less the clock skew MIT's acceptor adds to it (`clockskew`,
/// five minutes unless the profile says otherwise;
/// `krb5_gss_inquire_context`), so that a session cookie sealed with it
/// never outlives the ticket.
fn ticket_left(context_lifetime: Duration, skew: Duration) -> Duration {
    context_lifetime.saturating_sub(skew)
}

/// The most acceptor credentials an authenticator holds (one per GSSAPI
/// call at once, up to this; beyond, calls share them).
const MAX_ACCEPTOR_CREDS: usize = 64;

/// What a [`Pool`] lent a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lent {
    /// One no other call holds.
    Own,
    /// The spare, shared by the calls past the pool's size.
    Spare,
}

/// Values lent one call at a time: a call takes one that no other call
/// holds, when there is one, and gives it back; when all are lent it
/// shares `spare`.
struct Pool<T: Clone> {
    idle: std::sync::Mutex<Vec<T>>,
    spare: T,
    /// How many there are, lent or idle, the spare not counted unless
    /// among them ([`take_or_make`](Self::take_or_make)'s bound).
    #[cfg_attr(not(feature = "s4u"), allow(dead_code))]
    made: AtomicUsize,
}

impl<T: Clone> Pool<T> {
    fn new(spare: T, all: Vec<T>) -> Self {
        Self {
            made: AtomicUsize::new(all.len()),
            idle: std::sync::Mutex::new(all),
            spare,
        }
    }

    /// One for a call, as [`take`](Self::take), but made with `make` when
    /// none is idle and fewer than `max` were made (the spare when `make`
    /// fails): a pool that grows with the calls at once.
    #[cfg(feature = "s4u")]
    fn take_or_make(&self, max: usize, make: impl FnOnce() -> Option<T>) -> (T, Lent) {
        if let Some(idle) = self.idle() {
            return (idle, Lent::Own);
        }
        if self.made.fetch_add(1, Ordering::Relaxed) < max
            && let Some(made) = make()
        {
            return (made, Lent::Own);
        }
        self.made.fetch_sub(1, Ordering::Relaxed);
        (self.spare.clone(), Lent::Spare)
    }

    /// One for a call, and whether it is its own or the shared spare: give
    /// it back with [`give`](Self::give).
    fn take(&self) -> (T, Lent) {
        self.idle()
            .map_or_else(|| (self.spare.clone(), Lent::Spare), |own| (own, Lent::Own))
    }

    /// One of the idle ones, if any.
    fn idle(&self) -> Option<T> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Gives back what [`take`](Self::take) lent: the spare stays shared,
    /// not idle (a copy of it there would be lent as a call's own, and two
    /// calls would share a credential while others are free).
    fn give(&self, value: T, lent: Lent) {
        if lent == Lent::Own {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(value);
        }
    }
}

struct Accepted {
    principal: String,
    local_name: Option<String>,
    mutual: Option<Vec<u8>>,
    lifetime: Duration,
    delegated: Option<Cred>,
}

/// krb5's aname-to-localname answers by principal, each kept five minutes:
/// the rules come from `krb5.conf`, which rarely changes, and asking costs
/// as much as a fifth of an accept.
#[derive(Default)]
struct LocalNames(Mutex<HashMap<String, (Option<String>, Instant)>>);

impl LocalNames {
    const TTL: Duration = Duration::from_secs(300);
    /// The most principals kept; past it, the expired ones go, then all.
    const MAX: usize = 4096;

    fn get_or_ask(&self, principal: &str, ask: impl FnOnce() -> Option<String>) -> Option<String> {
        let lock = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some((local, at)) = lock().get(principal)
            && now.duration_since(*at) < Self::TTL
        {
            return local.clone();
        }
        let local = ask();
        let mut names = lock();
        if names.len() >= Self::MAX {
            names.retain(|_, (_, at)| now.duration_since(*at) < Self::TTL);
            if names.len() >= Self::MAX {
                names.clear();
            }
        }
        names.insert(principal.to_owned(), (local.clone(), now));
        local
    }
}

/// The most of a GSSAPI message logged, in characters.
const MAX_LOGGED_MESSAGE: usize = 512;

/// Why GSSAPI refused a ticket, as far as an operator can act on it
/// ([`Cause`]), with its message (MIT's, which names the service principal,
/// the key version and the encryption type: none of them secret).
#[derive(Debug)]
struct Refusal {
    cause: Cause,
    message: String,
}

impl Refusal {
    fn by_gssapi(e: &libgssapi::error::Error) -> Self {
        let message = e.to_string();
        Self {
            cause: Cause::of(&message),
            message,
        }
    }

    /// The refusal's outcome: a 401 whose metric reason is the cause's. A
    /// cause of this server's own (its keytab, its clock, its files) is
    /// said at `WARN`, once a minute for each cause, with what to do: it
    /// refuses every user alike while it lasts, which a refusal said at
    /// `DEBUG` would hide. The rest (a client's expired or replayed ticket)
    /// at `DEBUG`.
    fn outcome(self) -> AuthOutcome {
        let reason = self.cause.reason();
        // MIT's message names the ticket's service principal and key
        // version, which a client chooses (they travel in the clear): cut,
        // and written escaped.
        let message: String = self.message.chars().take(MAX_LOGGED_MESSAGE).collect();
        match self.cause.remedy() {
            Some(remedy) => palisade_core::sparse_warning!(
                per: reason;
                target: LOG_TARGET,
                cause = reason,
                error = ?message,
                "Negotiate tickets are refused for a cause of this server's: {remedy} (palisade_authentication_failures_total counts them; said once a minute)"
            ),
            None => {
                tracing::debug!(target: LOG_TARGET, cause = reason, error = ?message, "Negotiate token refused by GSSAPI")
            }
        }
        AuthOutcome::Rejected(negotiate_refusal(TokenKind::Kerberos.detail()).with_reason(reason))
    }
}

/// A refusal found by Palisade's own checks of an accepted context.
impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            cause: Cause::Other,
            message,
        }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        Self::from(message.to_owned())
    }
}

/// The cause of a GSSAPI refusal, read from its message: MIT's acceptor
/// says what went wrong in words that name the principal and the key
/// version (`rd_req_dec.c`), where its minor status is no use (GSSAPI's
/// mechanism glue maps it to a number of its own, and SPNEGO maps again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The ticket's key version is not in the keytab: the service's key
    /// changed (a password reset) and the keytab was not replaced.
    KeyVersion,
    /// No key for the ticket's service principal, or for its encryption
    /// type, in the keytab: a name the realm knows (a load balancer's
    /// alias) that the keytab lacks.
    NotInKeytab,
    /// The keytab's key for that version does not decrypt the ticket: the
    /// key was set twice under one version, or the keytab is another's.
    WrongKey,
    /// The keytab has the principal's key, but not of the ticket's
    /// encryption type (an RC4 ticket against AES keys).
    Enctype,
    /// This server's clock and the client's (or the KDC's) are further
    /// apart than the allowed skew.
    ClockSkew,
    /// A file the acceptor needs (the replay cache, the keytab) cannot be
    /// read or written: permissions, a read-only file system, a full disk.
    Files,
    /// The ticket has expired: the client's to renew.
    Expired,
    /// The ticket was seen before.
    Replay,
    /// Anything else (a malformed ticket, another realm's, Palisade's own
    /// checks of the context).
    Other,
}

impl Cause {
    fn of(message: &str) -> Self {
        let message = message.to_ascii_lowercase();
        // MIT's own words, after libgssapi's major status: the ticket's
        // service principal inside them is the client's to choose (and is
        // not escaped), so each template is matched where MIT puts its
        // words, at the start or the end, never anywhere.
        let mit = message
            .split_once("more information (")
            .map_or(message.as_str(), |(_, m)| m.strip_suffix(')').unwrap_or(m));
        let ends = |words: &str| mit.ends_with(words);
        let starts = |words: &str| mit.starts_with(words);
        let request = starts("request ticket server ");
        // "… found in keytab but not with enctype NAME": one word after.
        let enctype_missing = request
            && mit
                .rsplit_once(" found in keytab but not with enctype ")
                .is_some_and(|(_, name)| !name.is_empty() && !name.contains(' '));
        // "… not found in keytab (ticket kvno N)".
        let not_in_keytab = request
            && mit
                .rsplit_once(" not found in keytab (ticket kvno ")
                .and_then(|(_, n)| n.strip_suffix(')'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if (request && (ends("; keytab is likely out of date") || ends("; ticket is likely out of date")))
            || starts("cannot find key for ")
            || starts("specified version of key is not available")
        {
            Self::KeyVersion
        } else if enctype_missing || starts("cannot find key of appropriate type") {
            Self::Enctype
        } else if starts("cannot decrypt ticket for ")
            || (request && ends(" found in keytab but cannot decrypt ticket"))
        {
            Self::WrongKey
        } else if not_in_keytab
            || (request && mit.contains(" found in keytab but does not match server principal "))
            || starts("no key table entry found")
            || starts("key table entry not found")
        {
            Self::NotInKeytab
        } else if starts("clock skew too great") || starts("ticket not yet valid") {
            Self::ClockSkew
        } else if starts("replay cache file")
            || starts("permission denied")
            || starts("read-only file system")
            || starts("no space left on device")
            || starts("no such file or directory")
        {
            Self::Files
        } else if starts("ticket expired") {
            Self::Expired
        } else if starts("request is a replay") {
            Self::Replay
        } else {
            Self::Other
        }
    }

    /// The `reason` label of `palisade_authentication_failures_total`.
    fn reason(self) -> &'static str {
        match self {
            Self::KeyVersion => "keytab_key_version",
            Self::NotInKeytab => "not_in_keytab",
            Self::WrongKey => "keytab_wrong_key",
            Self::Enctype => "keytab_enctype",
            Self::ClockSkew => "clock_skew",
            Self::Files => "acceptor_files",
            Self::Expired => "ticket_expired",
            Self::Replay => "replay",
            Self::Other => "invalid_negotiate",
        }
    }

    /// What to do, for a cause of this server's own.
    fn remedy(self) -> Option<&'static str> {
        Some(match self {
            Self::KeyVersion => {
                "the tickets name a key version the keytab does not hold (the service's key or password changed): replace the keytab, keeping the old version until the tickets of it expire"
            }
            Self::NotInKeytab => {
                "the tickets are for a service principal the keytab has no key for (a host name or load balancer alias the realm knows): add its key to the keytab, or register the name on the account whose key the keytab holds"
            }
            Self::WrongKey => {
                "the keytab's key does not decrypt the tickets (the service's password was set again under the same key version, or the keytab is another account's): export the keytab again"
            }
            Self::Enctype => {
                "the keytab holds the service's key but not of the tickets' encryption type (an RC4 ticket against AES keys): make the account's encryption types (msDS-SupportedEncryptionTypes) and the keytab's agree, then export the keytab again"
            }
            Self::ClockSkew => {
                "this machine's clock and the clients' or the KDC's are too far apart: check NTP"
            }
            Self::Files => {
                "a file the Kerberos acceptor needs cannot be read or written (the replay cache in KRB5RCACHEDIR, TMPDIR or /var/tmp, the keytab): check its permissions and that its file system is writable"
            }
            Self::Expired | Self::Replay | Self::Other => return None,
        })
    }
}

/// One GSSAPI accept of `token`: the client, the mutual-authentication
/// token, the context's lifetime and a delegated credential. The local name
/// is looked up (through `local_names`) only when given.
fn accept(
    cred: Cred,
    token: &[u8],
    http_only: bool,
    local_names: Option<&LocalNames>,
    skew: Duration,
) -> Result<Accepted, Refusal> {
    let mut ctx = ServerCtx::new(Some(cred));
    let out = ctx.step(token, None).map_err(|e| Refusal::by_gssapi(&e))?;
    if !ctx.is_complete() {
        return Err("the context needs another round trip".into());
    }
    // The mechanism, the client's name and the lifetime in one inquiry.
    let info = ctx.info().map_err(|e| Refusal::by_gssapi(&e))?;
    if info.mechanism != GSS_MECH_KRB5 {
        return Err(Refusal::from(format!(
            "the established mechanism is {:?}, not Kerberos",
            info.mechanism
        )));
    }
    // libgssapi's `Display` shows a name it cannot read as a fixed text,
    // which every such user would share: refused instead.
    let principal = info
        .source_name
        .display_name()
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .ok_or("the client's name cannot be read as text")?;
    plain_principal(&principal)?;
    acceptable(info.flags, &principal, &info.target_name.to_string(), http_only)?;
    // krb5's aname-to-localname rules, only when no realm list decides it.
    let local_name = local_names.and_then(|names| {
        names.get_or_ask(&principal, || {
            info.source_name
                .local_name(Some(GSS_MECH_KRB5))
                .ok()
                .and_then(|b| String::from_utf8(b.to_vec()).ok())
        })
    });
    Ok(Accepted {
        principal,
        local_name,
        mutual: out.map(|b| b.to_vec()),
        lifetime: ticket_left(info.lifetime, skew),
        delegated: ctx.take_delegated_cred(),
    })
}

/// The local name of `user` (a principal of an allowed realm, without
/// it): with one allowed realm, the user of a one-part principal; else
/// what krb5's rules gave (`krb5`, asked only then).
fn local_name_of(allowed_realms: &[String], user: &str, krb5: Option<&str>) -> Option<String> {
    if let [_] = allowed_realms {
        (!user.contains('/')).then(|| user.to_owned())
    } else {
        krb5.map(str::to_owned)
    }
}

/// Whether a client principal names its realm plainly: `user@REALM`
/// with a realm, split at its last `@`, which must not be escaped (MIT
/// writes an `@` inside a realm as `\@`: `alice@X\@EXAMPLE.TEST` would
/// otherwise read as a user of `EXAMPLE.TEST`), and a realm without
/// escapes. Every reading of the realm (the allowed realms, the `*@REALM`
/// role entries) splits at the last `@`.
fn plain_principal(principal: &str) -> Result<(), String> {
    let Some((user, realm)) = principal.rsplit_once('@') else {
        return Err("the client's name has no realm".into());
    };
    let escaped = user.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1;
    if user.is_empty() || realm.is_empty() || escaped || realm.contains('\\') {
        return Err("the client's name does not name its realm plainly".into());
    }
    Ok(())
}

/// The anonymous client's name before its realm (RFC 8062: the realm is
/// `WELLKNOWN:ANONYMOUS`, or the real one when only the user is hidden).
const ANONYMOUS: &str = "WELLKNOWN/ANONYMOUS@";

/// Whether an established context may authenticate a request: not an
/// anonymous client (RFC 8062's anonymous PKINIT: the anonymous name, in
/// any realm, or the anonymous flag, which MIT's acceptor does not set
/// but another mechanism might; either proves no user), and, with no
/// service named (`http_only`), a ticket for an `HTTP/…` principal of the
/// keytab (a second check: the credential is acquired for `HTTP@` then).
fn acceptable(flags: CtxFlags, client: &str, target: &str, http_only: bool) -> Result<(), String> {
    if flags.contains(CtxFlags::GSS_C_ANON_FLAG) || client.starts_with(ANONYMOUS) {
        return Err("an anonymous ticket proves no user".into());
    }
    if http_only && !target.starts_with("HTTP/") {
        return Err(format!(
            "a ticket for {target}, not an HTTP service (name it with `service` to accept it)"
        ));
    }
    Ok(())
}

impl SpnegoAuthenticator {
    /// Starts building.
    pub fn builder() -> SpnegoAuthenticatorBuilder {
        SpnegoAuthenticatorBuilder {
            session: None,
            service: None,
            allowed_realms: Vec::new(),
            concurrency: 4 * std::thread::available_parallelism().map_or(2, usize::from),
            max_header: DEFAULT_MAX_HEADER,
            mapper: None,
            delegation: false,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }

    /// How much GSSAPI work was done.
    #[must_use]
    pub fn stats(&self) -> SpnegoStats {
        let s = &self.0.stats;
        SpnegoStats {
            calls: s.calls.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            total: Duration::from_nanos(s.nanos.load(Ordering::Relaxed)),
            max: Duration::from_nanos(s.max_nanos.load(Ordering::Relaxed)),
        }
    }

    fn identity(&self, principal: &str, local_name: Option<&str>) -> Result<Identity, &'static str> {
        // Again for a session cookie's name (sealed by an earlier release).
        if plain_principal(principal).is_err() {
            return Err("the client's name does not name its realm plainly");
        }
        let (user, realm) = principal.rsplit_once('@').unwrap_or((principal, ""));
        if !self.0.allowed_realms.is_empty() && !self.0.allowed_realms.iter().any(|r| r == realm) {
            return Err("the ticket's realm is not accepted");
        }
        let mut k = KerberosIdentity::default();
        principal.clone_into(&mut k.principal);
        k.realm = realm.to_owned();
        k.local_name = local_name_of(&self.0.allowed_realms, user, local_name);
        if let Some(map) = &self.0.mapper {
            let (roles, groups) = map(&k);
            k.roles = roles;
            k.groups = groups;
        }
        Ok(Identity::from_kerberos(k, Verification::assertion()))
    }

    /// The `Negotiate` token of the request: `Ok(None)` when there is none.
    fn token(&self, req: &dyn RequestHead) -> Result<Option<Vec<u8>>, &'static str> {
        let mut found: Option<Result<Vec<u8>, &'static str>> = None;
        let mut count = 0;
        let max = self.0.max_header;
        req.for_each_header("authorization", &mut |v| {
            // Another scheme's header (a large `Bearer` token) is its
            // authenticator's to judge, whatever its size.
            let Some(rest) = after_scheme(v) else {
                return;
            };
            count += 1;
            found = Some(if v.len() > max {
                Err("the Negotiate header is too large")
            } else {
                STANDARD
                    .decode(rest.trim_ascii())
                    .map_err(|_| "the Negotiate token is not base64")
            });
        });
        match (count, found) {
            (0, _) | (_, None) => Ok(None),
            (1, Some(r)) => r.map(Some),
            _ => Err("the request carries more than one Negotiate token"),
        }
    }
}

impl SpnegoAuthenticator {
    /// A valid session cookie, when sessions are on: no GSSAPI work. A
    /// cookie that does not open (expired, tampered, another key) is
    /// ignored and the client is asked to negotiate again.
    fn session_outcome(&self, req: &dyn RequestHead) -> AuthOutcome {
        let Some(cookie) = &self.0.session else {
            return AuthOutcome::NoCredential;
        };
        let mut found = None;
        req.for_each_header("cookie", &mut |v| {
            let Ok(text) = std::str::from_utf8(v) else { return };
            for pair in text.split(';') {
                if let Some((n, value)) = pair.trim().split_once('=')
                    && n == cookie.name
                    && found.is_none()
                {
                    found = cookie.open(value);
                }
            }
        });
        match found.map(|s| self.identity(&s.principal, s.local_name.as_deref())) {
            // A cookie, which a browser sends by itself: a credential the
            // request carries itself, of another user, wins over it.
            Some(Ok(identity)) => AuthOutcome::Authenticated(Authenticated::new(identity).ambient()),
            _ => AuthOutcome::NoCredential,
        }
    }
}

/// The client's delegated (forwarded) ticket-granting credential, when the
/// client delegated it (`curl --delegation always`, a browser on a trusted
/// host) and the authenticator keeps such tickets
/// ([`SpnegoAuthenticatorBuilder::accept_delegation`]): a front-end can call back-ends as the user with
/// [`DelegatedCredential::negotiate`]. Handlers find it with
/// `RequestAuth::attachment::<DelegatedCredential>()`.
#[derive(Clone)]
pub struct DelegatedCredential(Cred);

impl fmt::Debug for DelegatedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DelegatedCredential(<credential>)")
    }
}

impl DelegatedCredential {
    /// The credential, for the caller's own GSSAPI use.
    #[must_use]
    pub fn credential(&self) -> &Cred {
        &self.0
    }

    /// A Negotiate exchange with the host-based service `service`
    /// (`HTTP@backend.example.test`) as the user: the `Authorization`
    /// value to send ([`Negotiation::header`]) and the check of the
    /// answer ([`Negotiation::verify`]). Blocking (it may ask the KDC for a
    /// ticket): call it from `spawn_blocking`.
    ///
    /// # Errors
    /// [`SpnegoError::Initiate`] with GSSAPI's error.
    pub fn negotiate(&self, service: &str) -> Result<Negotiation, SpnegoError> {
        Negotiation::start(self.0.clone(), service)
    }
}

/// A Negotiate exchange an outbound call begins: the `Authorization` value
/// it sends, and the check that the answer comes from the service the
/// ticket is for. The ticket asks for mutual authentication, so the
/// upstream's successful answer carries `WWW-Authenticate: Negotiate
/// <token>` (as Palisade, mod_auth_gssapi and IIS send it), which only the
/// holder of the service's key can make; RFC 4559 §5 says to check it
/// before using the answer. Without [`verify`](Self::verify), the call
/// authenticates the user to the upstream but not the upstream to the
/// caller: over plain `http`, anyone on the path could answer.
///
/// `Debug` prints the service only.
pub struct Negotiation {
    header: String,
    service: String,
    context: libgssapi::context::ClientCtx,
}

impl fmt::Debug for Negotiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Negotiation")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Negotiation {
    /// The first leg for `service` with credential `cred`: a Kerberos
    /// initial token asking for mutual authentication.
    pub(crate) fn start(cred: Cred, service: &str) -> Result<Self, SpnegoError> {
        let err = |e| SpnegoError::initiate(service, &e);
        let target = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
            .and_then(|n| n.canonicalize(Some(GSS_MECH_KRB5)))
            .map_err(err)?;
        let mut context = libgssapi::context::ClientCtx::new(
            Some(cred),
            target,
            CtxFlags::GSS_C_MUTUAL_FLAG,
            // A Kerberos initial token (what SPNEGO would carry inside):
            // credentials obtained by delegation or S4U are Kerberos ones.
            Some(GSS_MECH_KRB5),
        );
        // A first step that asks for no token cannot happen for Kerberos; an
        // empty header would be refused by the back-end, which says so.
        let token = context
            .step(None, None)
            .map_err(err)?
            .map(|t| STANDARD.encode(&*t));
        Ok(Self {
            header: format!("Negotiate {}", token.unwrap_or_default()),
            service: service.to_owned(),
            context,
        })
    }

    /// The `Authorization` value: `Negotiate <token>`.
    #[must_use]
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The host-based service the ticket is for.
    #[must_use]
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Checks the upstream's answer to the call, given the values of its
    /// `WWW-Authenticate` headers: the `Negotiate` token among them must
    /// complete the exchange (the service's AP-REP). Call it for an answer
    /// the call's credential was accepted with (not a `401`); it does no
    /// I/O (the token is checked with the session key the ticket holds).
    ///
    /// # Errors
    /// [`SpnegoError::Unproven`] when the answer carries no Negotiate
    /// token, more than one, one that is not base64, or one GSSAPI refuses
    /// (another service's, a replayed or forged one).
    pub fn verify<'a>(self, www_authenticate: impl IntoIterator<Item = &'a [u8]>) -> Result<(), SpnegoError> {
        let token = negotiate_token(www_authenticate).and_then(|t| t.ok_or(NO_PROOF));
        self.complete(token)
    }

    /// [`verify`](Self::verify) for an upstream that may not prove itself
    /// (a relaxation, for servers that never send the token): an answer
    /// that carries no Negotiate token at all is `Ok(false)`, unproven;
    /// one that carries a token is checked as `verify` checks it
    /// (`Ok(true)`, proven), since a token that does not complete the
    /// exchange is an impostor's or a fault, never a server's way of
    /// saying nothing.
    ///
    /// # Errors
    /// As [`verify`](Self::verify), but for an answer without a token.
    pub fn verify_if_sent<'a>(
        self,
        www_authenticate: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<bool, SpnegoError> {
        match negotiate_token(www_authenticate).transpose() {
            None => Ok(false),
            Some(token) => self.complete(token).map(|()| true),
        }
    }

    /// The exchange completed with the answer's `token` (or refused for
    /// the reason it could not be had).
    fn complete(mut self, token: Result<&[u8], &'static str>) -> Result<(), SpnegoError> {
        let unproven = |reason: &str| SpnegoError::Unproven {
            service: self.service.clone(),
            reason: reason.to_owned(),
        };
        let token = token.map_err(unproven)?;
        let token = STANDARD
            .decode(token)
            .map_err(|_| unproven("its Negotiate token is not base64"))?;
        match self.context.step(Some(&token), None) {
            Ok(None) if self.context.is_complete() => Ok(()),
            Ok(_) => Err(unproven("its Negotiate token does not complete the exchange")),
            Err(e) => Err(unproven(&format!("its Negotiate token is refused: {e}"))),
        }
    }
}

/// What follows `Negotiate ` (the scheme in any case, and a space) in an
/// `Authorization` value or a challenge; `None` for another scheme, or
/// the scheme alone.
fn after_scheme(value: &[u8]) -> Option<&[u8]> {
    value
        .get(..10)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"negotiate "))
        .map(|_| &value[10..])
}

/// The one Negotiate token among an answer's `WWW-Authenticate` values,
/// still base64 (`None`: there is none), or why it cannot be had. A value may hold several
/// challenges, comma-separated (`Negotiate abc, Bearer realm="x"`): a
/// Negotiate token is a token68, which holds no comma, so its element is
/// whole.
fn negotiate_token<'a>(
    www_authenticate: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<&'a [u8]>, &'static str> {
    let mut tokens = www_authenticate
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        // `Negotiate` alone is a challenge, not a token.
        .filter_map(|element| after_scheme(element.trim_ascii()).map(<[u8]>::trim_ascii))
        .filter(|token| !token.is_empty());
    match (tokens.next(), tokens.next()) {
        (Some(t), None) => Ok(Some(t)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err("its answer carries more than one Negotiate token"),
    }
}

/// Why an answer without a Negotiate token proves nothing.
const NO_PROOF: &str =
    "its answer carries no mutual-authentication token (`WWW-Authenticate: Negotiate <token>`)";

#[cfg(feature = "s4u")]
/// Protocol transition and constrained delegation (S4U2Self, S4U2Proxy):
/// the front-end obtains, with its own service key, a ticket for a named
/// back-end on behalf of a user it has authenticated by any means (a JWT
/// included), and sends it as `Authorization: Negotiate …`.
///
/// The service's own credentials come from the client keytab
/// (`KRB5_CLIENT_KTNAME`, or the profile's `default_client_keytab_name`),
/// through the credentials cache (`KRB5CCNAME`): give the process a cache
/// of its own, `KRB5CCNAME=MEMORY:palisade`, or whatever principal a
/// shared cache holds is used instead, and the service's ticket-granting
/// ticket is written there for other processes (`new` warns of any other
/// cache). The KDC must allow it:
/// the service principal needs `ok_to_auth_as_delegate` for S4U2Self, and
/// to be allowed to delegate to the back-end for S4U2Proxy. MIT Kerberos
/// with its default (DB2) database supports S4U2Self and S4U2Proxy to the
/// service itself; S4U2Proxy to another service needs the LDAP database
/// module (`krbAllowedToDelegateTo`) or Active Directory. See
/// `docs/spnego.md`.
///
/// MIT holds a credential's lock for a whole impersonation, the requests
/// to the KDC included, so calls sharing one credential would run one at
/// a time (one slow realm's KDC holding up every user's): each call at
/// once takes a credential of its own, acquired when first needed, up to
/// 64 (beyond, calls share one). Clones share them.
#[derive(Clone)]
pub struct Impersonator {
    creds: Arc<Pool<Cred>>,
}

/// The credentials cache S4U calls would share with other processes (all
/// but a `MEMORY:` one), described, from `KRB5CCNAME`.
#[cfg(feature = "s4u")]
fn shared_ccache(krb5ccname: Option<&str>) -> Option<String> {
    match krb5ccname {
        Some(name) if name.starts_with("MEMORY:") => None,
        Some(name) => Some(format!("KRB5CCNAME={name}")),
        None => Some("of the library's default (KRB5CCNAME unset: FILE:/tmp/krb5cc_UID, or a keyring or KCM collection)".to_owned()),
    }
}

/// The most initiator credentials an [`Impersonator`] holds.
#[cfg(feature = "s4u")]
const MAX_IMPERSONATOR_CREDS: usize = 64;

#[cfg(feature = "s4u")]
impl fmt::Debug for Impersonator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Impersonator(<credential>)")
    }
}

#[cfg(feature = "s4u")]
impl Impersonator {
    /// Acquires the service's initiator credentials.
    ///
    /// # Errors
    /// [`SpnegoError::Credentials`] when there is no client keytab.
    pub fn new() -> Result<Self, SpnegoError> {
        let err = |e: libgssapi::error::Error| SpnegoError::Credentials {
            principal: None,
            message: e.to_string(),
        };
        if let Some(cache) = shared_ccache(std::env::var("KRB5CCNAME").ok().as_deref()) {
            palisade_core::config_warning!(
                target: LOG_TARGET,
                "S4U calls run as the principal of the Kerberos credentials cache {cache}, when it holds one (an operator's `kinit` under this user), not as the client keytab's, and the service's ticket-granting ticket is written there for every process of this user to use: set KRB5CCNAME=MEMORY:palisade (a cache of this process's own)"
            );
        }
        let cred = Self::acquire().map_err(err)?;
        Ok(Self {
            creds: Arc::new(Pool::new(cred.clone(), vec![cred])),
        })
    }

    /// The service's initiator credentials, from the client keytab: no KDC
    /// is asked until they are used.
    fn acquire() -> Result<Cred, libgssapi::error::Error> {
        let mut mechs = OidSet::new();
        mechs.add(GSS_MECH_KRB5)?;
        Cred::acquire(None, None, CredUsage::Both, Some(&mechs))
    }

    /// A Negotiate exchange with the host-based service `service` as
    /// `user` (`alice@EXAMPLE.TEST`): the `Authorization` value and the
    /// check of the answer ([`Negotiation`]). Blocking: call it from
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`SpnegoError::Initiate`] with GSSAPI's error (the KDC refused the
    /// impersonation or the delegation).
    pub fn negotiate(&self, user: &str, service: &str) -> Result<Negotiation, SpnegoError> {
        let err = |e| SpnegoError::initiate(service, &e);
        let name = Name::new(user.as_bytes(), Some(libgssapi::oid::GSS_NT_KRB5_PRINCIPAL)).map_err(err)?;
        let mut mechs = OidSet::new();
        mechs.add(GSS_MECH_KRB5).map_err(err)?;
        let (own, lent) = self
            .creds
            .take_or_make(MAX_IMPERSONATOR_CREDS, || Self::acquire().ok());
        let cred = own.impersonate(&name, None, CredUsage::Initiate, Some(&mechs));
        self.creds.give(own, lent);
        Negotiation::start(cred.map_err(err)?, service)
    }
}

impl FromPolicy for SpnegoAuthenticator {
    /// The authenticator the workload's `SpnegoSettings` describe (defaults
    /// without one), with the keytab of `KRB5_KTNAME`: SPNEGO is turned on
    /// by giving a keytab, so this always builds one. For a role-mapping
    /// hook, use [`SpnegoAuthenticatorBuilder::settings_from`] and
    /// [`build_for`](SpnegoAuthenticatorBuilder::build_for).
    ///
    /// # Errors
    /// A [`PolicyError`] naming the `SpnegoSettings` document (or the file)
    /// when a value cannot be used or the credentials cannot be acquired,
    /// with the [`SpnegoError`] as its [`cause`](PolicyError::cause).
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError> {
        SpnegoAuthenticator::builder()
            .settings_from(policy)?
            .build_for(policy)
            .map(Some)
    }
}

/// A ticket check (on the request's worker or the blocking pool), reported
/// while it runs
/// ([`SPNEGO_BLOCKING`](palisade_core::metrics::SPNEGO_BLOCKING)): it ends
/// when the call does, even if the request gave up waiting.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn start() -> Self {
        metrics::counter!(palisade_core::metrics::SPNEGO_BLOCKING_CALLS).increment(1);
        let gauge = metrics::gauge!(palisade_core::metrics::SPNEGO_BLOCKING);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The permits of authenticators of one `concurrency`, shared by every
/// such authenticator alive in the process: a reload's new one takes the
/// permits its predecessor's stalled accepts still hold, rather than
/// admitting another `concurrency` of them to the blocking pool.
fn shared_permits(concurrency: usize) -> Arc<Semaphore> {
    static POOLS: Mutex<Vec<(usize, std::sync::Weak<Semaphore>)>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    pools.retain(|(_, p)| p.strong_count() > 0);
    if let Some(alive) = pools
        .iter()
        .find(|(n, _)| *n == concurrency)
        .and_then(|(_, p)| p.upgrade())
    {
        return alive;
    }
    let permits = Arc::new(Semaphore::new(concurrency));
    pools.push((concurrency, Arc::downgrade(&permits)));
    permits
}

/// The accepts running on a runtime's worker thread now, whichever
/// authenticator runs them: a reload's new one, or a second one, must not
/// add its own workers' worth ([`InPlace`]).
static IN_PLACE: AtomicUsize = AtomicUsize::new(0);

/// A worker thread's turn at an accept in place, counted while it runs.
struct InPlace<'a>(&'a AtomicUsize);

impl<'a> InPlace<'a> {
    /// A turn, when fewer than `most` accepts run in place now.
    fn take(count: &'a AtomicUsize, most: usize) -> Option<Self> {
        let mut now = count.load(Ordering::Relaxed);
        loop {
            if now >= most {
                return None;
            }
            match count.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Self(count)),
                Err(seen) => now = seen,
            }
        }
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Authenticator for SpnegoAuthenticator {
    fn challenge(&self) -> Option<String> {
        Some("Negotiate".into())
    }

    fn method(&self) -> Option<palisade_core::AuthMethod> {
        Some(palisade_core::AuthMethod::Spnego)
    }

    fn authenticate(&self, req: &dyn RequestHead) -> Check<AuthOutcome> {
        let token = match self.token(req) {
            Ok(Some(t)) => t,
            Ok(None) => return Check::Ready(self.session_outcome(req)),
            Err(detail) => {
                tracing::debug!(target: LOG_TARGET, reason = detail, "Negotiate token refused");
                return Check::Ready(refused(detail));
            }
        };
        let kind = classify(&token);
        if matches!(kind, Kind::Ntlm | Kind::SpnegoOther) {
            return Check::Ready(ntlm_offered(req, kind));
        }
        if !matches!(kind, Kind::SpnegoKerberos | Kind::Kerberos) {
            tracing::debug!(target: LOG_TARGET, ?kind, "Negotiate token refused before GSSAPI");
            return Check::Ready(refused(kind.detail()));
        }
        // On a multi-threaded runtime (axum's) the accept, CPU work of a few
        // hundred microseconds, runs right here: a hand-off to another
        // thread (the blocking pool, or `block_in_place`'s) costs a thread
        // wake-up of about as much on a small machine. On all of its
        // workers but one at most: an accept that stalls (the replay
        // cache's lock held by another process, a slow disk) must leave
        // one to serve every other connection. On a single-threaded
        // runtime (actix-web's), on the blocking pool.
        let most_here = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                h.metrics().num_workers().saturating_sub(1)
            }
            Ok(_) => 0,
            // No runtime: the caller's own thread.
            Err(_) => usize::MAX,
        };
        if let Some(here) = InPlace::take(&IN_PLACE, most_here)
            && let Ok(permit) = self.0.permits.clone().try_acquire_owned()
        {
            let started = Instant::now();
            let local_names = (self.0.allowed_realms.len() != 1).then_some(&self.0.local_names);
            let in_flight = InFlight::start();
            let (cred, lent) = self.0.cred.take();
            let result = accept(cred.clone(), &token, self.0.http_only, local_names, self.0.skew);
            self.0.cred.give(cred, lent);
            drop((in_flight, permit, here));
            return Check::Ready(self.accepted(result, started));
        }
        let this = self.clone();
        Check::pending(async move {
            let permit = match tokio::time::timeout(
                this.0.queue_timeout,
                this.0.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return refused("the Negotiate token is not acceptable"),
                Err(_) => {
                    metrics::counter!(palisade_core::metrics::SPNEGO_SHED).increment(1);
                    // Each is counted; said once a minute (a flood of
                    // tickets would fill the logs).
                    static SHED: palisade_core::logging::Sparse =
                        palisade_core::logging::Sparse::per_minute();
                    if SHED.due() {
                        tracing::warn!(target: LOG_TARGET, waited = ?this.0.queue_timeout, "Negotiate tickets found no GSSAPI permit in time: answered 503 (palisade_spnego_shed_total counts them; said once a minute)");
                    } else {
                        tracing::debug!(target: LOG_TARGET, "a Negotiate ticket found no GSSAPI permit in time: answered 503");
                    }
                    return AuthOutcome::Respond(
                        palisade_core::adapter::Reply::problem(
                            503,
                            "busy",
                            "Service busy",
                            "Too many Kerberos tickets are being checked at once; try again.",
                        )
                        .header("retry-after", "1"),
                    );
                }
            };
            let inner = this.0.clone();
            let started = Instant::now();
            let in_flight = InFlight::start();
            // The permit goes with the work, not with this future: a caller
            // that hangs up mid-accept does not free a permit while the
            // GSSAPI call still runs on the blocking pool.
            let result = tokio::task::spawn_blocking(move || {
                let _held = (in_flight, permit);
                let local_names = (inner.allowed_realms.len() != 1).then_some(&inner.local_names);
                let (cred, lent) = inner.cred.take();
                let result = accept(cred.clone(), &token, inner.http_only, local_names, inner.skew);
                inner.cred.give(cred, lent);
                result
            })
            .await
            .unwrap_or_else(|_| Err(Refusal::from("the GSSAPI call panicked")));
            this.accepted(result, started)
        })
    }
}

impl SpnegoAuthenticator {
    /// The outcome of a GSSAPI accept that began at `started`, counted.
    fn accepted(&self, result: Result<Accepted, Refusal>, started: Instant) -> AuthOutcome {
        let s = &self.0.stats;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.nanos.fetch_add(nanos, Ordering::Relaxed);
        s.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        let accepted = match result {
            Ok(a) => a,
            Err(refusal) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                return refusal.outcome();
            }
        };
        let identity = match self.identity(&accepted.principal, accepted.local_name.as_deref()) {
            Ok(id) => id,
            Err(detail) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                return refused(detail);
            }
        };
        // A browser answers a `401 Negotiate` with a ticket by itself,
        // whatever page started the request.
        let mut ok = Authenticated::new(identity).browser_sent();
        if let Some(m) = accepted.mutual.filter(|m| !m.is_empty()) {
            ok = ok.with_response_header("www-authenticate", format!("Negotiate {}", STANDARD.encode(m)));
        }
        if let Some(set) = self.0.session.as_ref().and_then(|c| {
            c.seal(
                &accepted.principal,
                accepted.local_name.as_deref(),
                accepted.lifetime,
            )
        }) {
            // The application's response carries the session cookie: no
            // shared cache may keep it for others (as sign-in's renewals).
            ok = ok
                .with_response_header("set-cookie", set)
                .with_response_header("cache-control", "private".to_owned());
        }
        if let Some(cred) = accepted.delegated.filter(|_| self.0.delegation) {
            ok = ok.with_attachment(DelegatedCredential(cred));
        }
        AuthOutcome::Authenticated(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the keytab holds is said at start-up, at `INFO`: the
    /// principal, its key version and encryption types, never a key; a
    /// keytab of DES or RC4 keys only is warned of.
    #[test]
    fn what_the_keytab_holds_is_said_and_weak_keys_warned_of() {
        if !palisade_testkit::in_a_process_of_its_own(
            "tests::what_the_keytab_holds_is_said_and_weak_keys_warned_of",
        ) {
            return;
        }
        let realm = palisade_testkit::KerberosRealm::start().unwrap_or_else(|e| panic!("{e}"));
        let keytab = realm.add_service("HTTP/web.example.test").unwrap();
        let weak = realm.dir().join("weak.keytab");
        let script = format!(
            "addent -password -p HTTP/old.example.test@EXAMPLE.TEST -k 3 -e arcfour-hmac\nsecret\nwkt {}\nquit\n",
            weak.display()
        );
        let mut ktutil = std::process::Command::new("ktutil")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ktutil runs (Debian's krb5-user, which ./scripts/test installs)");
        std::io::Write::write_all(ktutil.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        assert!(ktutil.wait().unwrap().success());
        let (lines, subscriber) = palisade_testkit::logs::Lines::subscriber("info");
        tracing::subscriber::with_default(subscriber, || {
            for file in [&keytab, &weak] {
                let name = format!("FILE:{}", file.display());
                said_what_the_keytab_holds(&|var: &str| (var == "KRB5_KTNAME").then(|| name.clone()), None);
                said_what_the_keytab_holds(
                    &|var: &str| (var == "KRB5_KTNAME").then(|| name.clone()),
                    Some("HTTP@web.example.test"),
                );
            }
        });
        let said = lines.containing("are accepted with the keytab's keys");
        assert!(
            matches!(&said[..], [web, _, old, _] if web.contains("HTTP/web.example.test@EXAMPLE.TEST (kvno ")
                && web.contains("aes256-cts-hmac-sha1-96")
                && old.contains("HTTP/old.example.test@EXAMPLE.TEST (kvno 3: arcfour-hmac)")),
            "{}",
            lines.text()
        );
        // Warned of for the acceptor's own principals only: not when the
        // service is another's (the second listing of the weak keytab).
        let warned = lines.containing("holds only DES or RC4 keys for HTTP/old.example.test@EXAMPLE.TEST");
        assert_eq!(warned.len(), 1, "{}", lines.text());
        assert_eq!(
            lines.containing("holds only DES or RC4 keys").len(),
            1,
            "{}",
            lines.text()
        );
    }

    /// MIT's acceptor's messages (`rd_req_dec.c`, the com_err tables) read
    /// as causes: the ones this server can act on apart from the clients'.
    #[test]
    fn gssapi_refusals_are_read_as_their_causes() {
        let gss = |minor: &str| {
            format!("Unspecified GSS failure.  Minor code may provide more information ({minor})")
        };
        for (message, cause) in [
            (
                "Request ticket server HTTP/web@CORP.EXAMPLE kvno 3 not found in keytab; keytab is likely out of date",
                Cause::KeyVersion,
            ),
            (
                "Request ticket server HTTP/lb@CORP.EXAMPLE not found in keytab (ticket kvno 2)",
                Cause::NotInKeytab,
            ),
            (
                "Request ticket server HTTP/web@CORP.EXAMPLE kvno 2 enctype aes256-cts found in keytab but cannot decrypt ticket",
                Cause::WrongKey,
            ),
            ("Clock skew too great", Cause::ClockSkew),
            ("Ticket not yet valid", Cause::ClockSkew),
            ("Permission denied", Cause::Files),
            ("Read-only file system", Cause::Files),
            (
                "Request ticket server HTTP/web@CORP.EXAMPLE kvno 2 not found in keytab; ticket is likely out of date",
                Cause::KeyVersion,
            ),
            (
                "Cannot find key for HTTP/web@CORP.EXAMPLE kvno 4 in keytab (request ticket server HTTP/web@CORP.EXAMPLE)",
                Cause::KeyVersion,
            ),
            (
                "Request ticket server HTTP/web@CORP.EXAMPLE kvno 3 found in keytab but not with enctype rc4-hmac",
                Cause::Enctype,
            ),
            (
                "Cannot decrypt ticket for HTTP/web@CORP.EXAMPLE using keytab key for HTTP/web@CORP.EXAMPLE",
                Cause::WrongKey,
            ),
            (
                "Request ticket server HTTP/lb@CORP.EXAMPLE found in keytab but does not match server principal HTTP/web@CORP.EXAMPLE",
                Cause::NotInKeytab,
            ),
            (
                "Replay cache file /var/tmp/krb5_0.rcache2 is not owned by uid 0",
                Cause::Files,
            ),
            ("Ticket expired", Cause::Expired),
            ("Request is a replay", Cause::Replay),
            ("ASN.1 encoding ended unexpectedly", Cause::Other),
            // An authenticator that does not decrypt: the client's.
            ("Decrypt integrity check failed", Cause::Other),
            // A service principal a client named to steer the reading.
            (
                "Request ticket server HTTP/x; keytab is likely out of date found in keytab but cannot decrypt ticket not found in keytab (ticket kvno 2)",
                Cause::NotInKeytab,
            ),
            (
                "Request ticket server HTTP/cannot decrypt ticket for x not found in keytab (ticket kvno 2)",
                Cause::NotInKeytab,
            ),
        ] {
            assert_eq!(Cause::of(&gss(message)), cause, "{message}");
            assert_eq!(
                cause.remedy().is_some(),
                !matches!(cause, Cause::Expired | Cause::Replay | Cause::Other)
            );
        }
    }

    /// Only a cache of the process's own keeps S4U to the keytab's
    /// principal and its ticket to the process.
    #[cfg(feature = "s4u")]
    #[test]
    fn s4u_warns_of_every_cache_but_the_processs_own() {
        assert_eq!(shared_ccache(Some("MEMORY:palisade")), None);
        for name in [Some("FILE:/tmp/krb5cc_1000"), Some("KCM:"), None] {
            let said = shared_ccache(name).expect("a shared cache");
            assert!(said.contains("KRB5CCNAME"), "{said}");
        }
    }

    /// Calls at once each take a credential no other holds (MIT locks a
    /// credential for a whole accept), share the spare past the pool's
    /// size, and give theirs back for the next.
    #[test]
    fn calls_at_once_take_credentials_of_their_own() {
        let pool = Pool::new(0, vec![1, 2]);
        let (a, b) = (pool.take(), pool.take());
        assert_ne!(a.0, b.0);
        assert_eq!((a.1, b.1), (Lent::Own, Lent::Own));
        let spare = pool.take();
        assert_eq!(spare, (0, Lent::Spare), "all lent: the spare, shared");
        pool.give(spare.0, spare.1);
        pool.give(a.0, a.1);
        assert_eq!(pool.take(), a, "given back, lent again");
        // The spare given back is not lent as a call's own.
        assert_eq!(pool.take(), (0, Lent::Spare));
    }

    /// MIT's acceptor reports a context's lifetime with its clock skew
    /// added: the ticket has that much less, and a session cookie sealed
    /// with it must not outlive the ticket. A ticket inside the skew's
    /// grace has nothing left to seal a cookie with.
    #[test]
    fn the_ticket_left_is_the_context_lifetime_without_the_acceptors_skew() {
        let skew = Duration::from_secs(300);
        assert_eq!(
            ticket_left(Duration::from_secs(36_000), skew),
            Duration::from_secs(35_700)
        );
        assert_eq!(ticket_left(Duration::from_secs(300), skew), Duration::ZERO);
        assert_eq!(ticket_left(Duration::from_secs(120), skew), Duration::ZERO);
        assert_eq!(
            ticket_left(Duration::from_secs(1800), Duration::from_secs(900)),
            Duration::from_secs(900)
        );
        let cookie = SessionCookie::new("palisade_negotiate").key(1, &[7; 32]).unwrap();
        assert!(
            cookie
                .seal(
                    "alice@EXAMPLE.TEST",
                    None,
                    ticket_left(Duration::from_secs(200), skew)
                )
                .is_none(),
            "no cookie for a ticket within the skew's grace"
        );
    }

    #[test]
    fn the_one_negotiate_token_is_found_among_an_answers_challenges() {
        let token = |values: &[&'static str]| {
            negotiate_token(values.iter().map(|v| v.as_bytes())).and_then(|t| t.ok_or(NO_PROOF))
        };
        for (values, want) in [
            (&["Negotiate YWJj"][..], "YWJj"),
            (&["negotiate   YWJj  "], "YWJj"),
            (&["NEGOTIATE YWJj"], "YWJj"),
            (&["Negotiate YWJj, Bearer realm=\"x\""], "YWJj"),
            (
                &["Bearer realm=\"x\", error=\"invalid_token\", Negotiate YWJj"],
                "YWJj",
            ),
            (&["Bearer realm=\"x\"", "Negotiate YWJj"], "YWJj"),
            (&["Negotiate", "Negotiate YWJj"], "YWJj"),
        ] {
            assert_eq!(token(values), Ok(want.as_bytes()), "{values:?}");
        }
        for (values, why) in [
            (&[][..], "no mutual-authentication token"),
            (&["Negotiate"], "no mutual-authentication token"),
            (&["Negotiate ,Bearer"], "no mutual-authentication token"),
            (&["NegotiateYWJj"], "no mutual-authentication token"),
            (
                &["Bearer realm=\"Negotiate YWJj\""],
                "no mutual-authentication token",
            ),
            (&["Negotiate YWJj", "Negotiate ZGVm"], "more than one"),
            (&["Negotiate YWJj, Negotiate ZGVm"], "more than one"),
        ] {
            let err = token(values).unwrap_err();
            assert!(err.contains(why), "{values:?}: {err}");
        }
    }

    /// Authenticators of one concurrency share their permits while one is
    /// alive (a reload's new one and the one it replaces); another
    /// concurrency has its own; once none is alive, the next starts anew.
    #[test]
    fn authenticators_of_one_concurrency_share_their_permits() {
        // A concurrency no other test builds with.
        let (n, m) = (9_901, 9_902);
        let old = shared_permits(n);
        let held = Arc::clone(&old).try_acquire_owned().unwrap();
        let new = shared_permits(n);
        assert!(Arc::ptr_eq(&old, &new));
        assert_eq!(new.available_permits(), n - 1, "the stalled accept's permit");
        assert!(!Arc::ptr_eq(&new, &shared_permits(m)));
        drop((held, old, new));
        assert_eq!(shared_permits(n).available_permits(), n);
    }

    #[test]
    fn anonymous_clients_and_other_services_tickets_are_not_acceptable() {
        let (plain, anon) = (CtxFlags::GSS_C_MUTUAL_FLAG, CtxFlags::GSS_C_ANON_FLAG);
        let http = "HTTP/www.example.test@EXAMPLE.TEST";
        assert_eq!(acceptable(plain, "alice@EXAMPLE.TEST", http, true), Ok(()));
        // RFC 8062: the flag, or the anonymous name, proves no user.
        assert!(acceptable(anon | plain, "alice@EXAMPLE.TEST", http, true).is_err());
        assert!(acceptable(plain, "WELLKNOWN/ANONYMOUS@WELLKNOWN:ANONYMOUS", http, false).is_err());
        assert!(acceptable(plain, "WELLKNOWN/ANONYMOUS@EXAMPLE.TEST", http, false).is_err());
        // No service named: HTTP principals only; a named one decides.
        let host = "host/www.example.test@EXAMPLE.TEST";
        let e = acceptable(plain, "alice@EXAMPLE.TEST", host, true).unwrap_err();
        assert!(e.contains(host) && e.contains("service"), "{e}");
        assert_eq!(acceptable(plain, "alice@EXAMPLE.TEST", host, false), Ok(()));
        assert!(acceptable(plain, "alice@EXAMPLE.TEST", "http/www@EXAMPLE.TEST", true).is_err());
    }

    /// Checked before any Kerberos credential is looked for.
    #[test]
    fn a_principal_names_its_realm_plainly_or_is_refused() {
        for ok in [
            "alice@EXAMPLE.TEST",
            "HTTP/www@EXAMPLE.TEST",
            r"bob\@corp.example@CORP.EXAMPLE",
        ] {
            assert_eq!(plain_principal(ok), Ok(()), "{ok}");
        }
        // The last `@` escaped: the realm is `X\@EXAMPLE.TEST`, not
        // `EXAMPLE.TEST`.
        for bad in [
            r"alice@X\@EXAMPLE.TEST",
            r"alice@X\.EXAMPLE",
            "alice",
            "alice@",
            "@EXAMPLE.TEST",
            r"alice\\\@EXAMPLE.TEST",
        ] {
            assert!(plain_principal(bad).is_err(), "{bad}");
        }
        assert_eq!(
            plain_principal(r"alice\\@EXAMPLE.TEST"),
            Ok(()),
            "an escaped backslash"
        );
    }

    #[test]
    fn a_session_cookie_named_as_sign_ins_fails_to_load() {
        use palisade_core::policy::{PolicySet, Workload};
        let yaml = |cookie: &str, login: &str| {
            format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: OidcLogin\nmetadata: {{name: login}}\nspec:\n  issuer: https://kc.example/realms/istio\n  clientId: productpage\n{login}---\napiVersion: palisade.dev/v1alpha1\nkind: SpnegoSettings\nmetadata: {{name: krb}}\nspec:\n  sessionCookie: {{{cookie}keys: [{{id: 1, keyFile: /nonexistent/key}}]}}\n"
            )
        };
        let outcome = |cookie: &str, login: &str| {
            let set = PolicySet::from_yaml_str(&yaml(cookie, login), "p.yaml").unwrap();
            let w = set.for_workload(&Workload::new("productpage", "default"));
            SpnegoAuthenticator::builder()
                .settings_from(&w)
                .map(|_| ())
                .unwrap_err()
        };
        for (cookie, login) in [
            ("", ""),
            ("name: palisade_session, ", ""),
            ("name: palisade_session_1, ", ""),
            ("name: s, ", "  session: {cookieName: s}\n"),
            ("name: s_login_x, ", "  session: {cookieName: s}\n"),
        ] {
            let err = outcome(cookie, login);
            // The default name is no sign-in name.
            let clash = !cookie.is_empty();
            assert_eq!(
                err.field.as_deref(),
                Some(if clash {
                    "spec.sessionCookie.name"
                } else {
                    "spec.sessionCookie.keys[0].keyFile"
                }),
                "{cookie} {login}: {err}"
            );
        }
        // Names apart: the next error is the (missing) key file's.
        let err = outcome("name: palisade_sessions, ", "");
        assert_eq!(
            err.field.as_deref(),
            Some("spec.sessionCookie.keys[0].keyFile"),
            "{err}"
        );
    }

    #[test]
    fn local_names_come_from_one_realm_or_from_krb5() {
        let one = ["A.TEST".to_owned()];
        assert_eq!(local_name_of(&one, "alice", None).as_deref(), Some("alice"));
        assert_eq!(local_name_of(&one, "alice/admin", Some("x")), None, "two parts");
        // Two realms: `alice@A` and `alice@B` are not both `alice`.
        let two = ["A.TEST".to_owned(), "B.TEST".to_owned()];
        assert_eq!(local_name_of(&two, "alice", None), None);
        assert_eq!(
            local_name_of(&two, "alice", Some("alice")).as_deref(),
            Some("alice")
        );
        assert_eq!(local_name_of(&[], "alice", Some("al")).as_deref(), Some("al"));
    }

    #[test]
    fn a_session_cookie_name_that_could_add_an_attribute_is_refused() {
        for name in ["sid; Domain=evil.example", "a=b", ""] {
            let cookie = SessionCookie::new(name).key(1, &[7; 32]).unwrap();
            match SpnegoAuthenticator::builder().session_cookie(cookie).build() {
                Err(SpnegoError::SessionCookieName(n)) => assert_eq!(n, name),
                other => panic!("{name:?}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn a_local_name_is_asked_once_per_principal_and_the_cache_stays_bounded() {
        let names = LocalNames::default();
        let mut asked = 0;
        for _ in 0..3 {
            let local = names.get_or_ask("alice@EXAMPLE.TEST", || {
                asked += 1;
                Some("alice".into())
            });
            assert_eq!(local.as_deref(), Some("alice"));
        }
        assert_eq!(asked, 1, "asked again for a principal it knows");
        // No local name is an answer too.
        assert_eq!(names.get_or_ask("svc@OTHER.TEST", || None), None);
        assert_eq!(names.get_or_ask("svc@OTHER.TEST", || Some("wrong".into())), None);
        for i in 0..LocalNames::MAX + 10 {
            names.get_or_ask(&format!("user{i}@EXAMPLE.TEST"), || Some(format!("user{i}")));
        }
        let held = names.0.lock().unwrap().len();
        assert!(held <= LocalNames::MAX, "{held} names held");
        // An answer older than the time to live is asked again.
        names.0.lock().unwrap().insert(
            "old@EXAMPLE.TEST".into(),
            (
                Some("stale".into()),
                Instant::now() - LocalNames::TTL - Duration::from_secs(1),
            ),
        );
        assert_eq!(
            names
                .get_or_ask("old@EXAMPLE.TEST", || Some("fresh".into()))
                .as_deref(),
            Some("fresh")
        );
    }
}
