//! What Palisade reports through the [`metrics`] facade, the ecosystem's
//! common one: the application installs the exporter it likes
//! (`metrics-exporter-prometheus`, OpenTelemetry, statsd), and Palisade's
//! counters appear in it. Without a recorder every report is a no-op.
//!
//! The guard registers its handles when it is built (and on every
//! [`Guard::replace`](crate::Guard::replace)), so install the recorder
//! first; a request then costs a few relaxed atomic additions and two reads
//! of the clock (quanta's, from the TSC where it is stable), and a refused
//! credential a lookup of its reason's [`AUTHENTICATION_FAILURES`] series
//! in the recorder. Without a
//! recorder the first check finds that nobody listens, and later ones read
//! no clock.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`DECISIONS`] | counter | `decision` (`allow`, `deny`, `reply`), `policy`, `action` |
//! | [`AUTHENTICATIONS`] | counter | `method` (`jwt`, `mtls`, `spnego`, `session`, `custom`), `result` (`success`, `failure`; `mtls` failures are client certificates `palisade-mtls` refused in the handshake and requests refused because their connection's certificate is refused now, its successes requests with a verified peer) |
//! | [`AUTHENTICATION_FAILURES`] | counter | `method`, `reason` (the authenticator's name for why, or the refusal's kind: a fixed set) |
//! | [`CHECK_DURATION`] | histogram (seconds) | — (a cancelled check's time too, up to its cancelling) |
//! | [`CHECKS_CANCELLED`] | counter | — |
//! | [`JWKS_FETCHES`] | counter | `issuer`, `result` (`success`, `failure`; both at zero from the start, for each issuer; with an empty `issuer` when a workload's policy file configures none) |
//! | [`TOKEN_CACHE`] | counter | `result` (`hit`, `miss`) |
//! | [`INTROSPECTIONS`] | counter | `issuer`, `result` (`active`, `inactive`, `failure`) |
//! | [`TENANTS`] | gauge | `issuer` (an issuer pattern, `…/{tenant}`) |
//! | [`TENANT_EVENTS`] | counter | `issuer` (an issuer pattern), `event` (`started`, `evicted`, `throttled`; each at zero from the start) |
//! | [`SPNEGO_BLOCKING`] | gauge | — |
//! | [`SPNEGO_BLOCKING_CALLS`] | counter | — |
//! | [`SPNEGO_SHED`] | counter | — |
//! | [`CONFIG_RELOADS`] | counter | `result` (`success`, `failure`; a file the watch cannot read, for 5 s, counts one failure) |
//! | [`CONFIG_LAST_RELOAD_OK`] | gauge (0 or 1) | — (with a `PolicyReloader`) |
//! | [`CONFIG_LAST_RELOAD_SUCCESS`] | gauge (seconds since the epoch) | — (with a `PolicyReloader`) |
//!
//! An `issuer` label is the issuer as configured, without the credentials
//! or query values a URL could carry (shown `***`).
//!
//! Every refusal of the guard, 401 or 403, counts as `decision="deny"`;
//! `reply` is any other answer Palisade gives in the application's place
//! (a redirect to sign in, a sign-in callback). A route policy
//! ([`adapter::authorize_route`](crate::adapter::authorize_route)) decides
//! after the guard allowed: its refusal (or redirect to sign in) is counted
//! too, after the guard's `allow`, with `policy` and `action` empty.
//! `policy` is the deciding policy (`NS/NAME`),
//! empty when none decided (no policy applies, no `ALLOW` policy matched,
//! a credential was refused); `action` is its action (`ALLOW`, `DENY`,
//! `CUSTOM`), empty likewise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Histogram, IntoF64, Unit};

use crate::authn::{AuthOutcome, Authenticator};
use crate::authz::{AccessDecision, AccessPolicy, Action};

/// Decisions of the guard: counter.
pub const DECISIONS: &str = "palisade_decisions_total";
/// Credentials checked, by method and result: counter.
pub const AUTHENTICATIONS: &str = "palisade_authentications_total";
/// Time from a request's arrival at the guard to its decision: histogram.
pub const CHECK_DURATION: &str = "palisade_check_duration_seconds";
/// Checks dropped before they were decided: counter. A check that waits
/// (for an issuer's keys, an introspection, an external authorizer, a
/// Kerberos ticket check) and whose request goes away first (the client
/// closed the connection, a server's timeout dropped it) decides nothing,
/// so it is in no `decision`; a guard's check has its time so far in
/// [`CHECK_DURATION`]. A route policy's check that waits (an external
/// authorizer) is counted here too.
pub const CHECKS_CANCELLED: &str = "palisade_checks_cancelled_total";
/// Fetches of an issuer's JWKS: counter. A tenant's fetches are labelled
/// with its provider's issuer pattern (`…/{tenant}`).
pub const JWKS_FETCHES: &str = "palisade_jwks_fetches_total";
/// Lookups in the verified-token cache: counter.
pub const TOKEN_CACHE: &str = "palisade_token_cache_total";
/// Calls to an issuer's token introspection endpoint (RFC 7662): counter.
pub const INTROSPECTIONS: &str = "palisade_introspections_total";
/// Tenants of an issuer pattern whose keys are held now (at most its
/// `max_tenants`): gauge.
pub const TENANTS: &str = "palisade_jwt_tenants";
/// What happened to an issuer pattern's tenants: counter. `started`: a
/// tenant met (again) and set up, its keys fetched when they are its own;
/// `evicted`: one dropped for a newcomer when `max_tenants` were held;
/// `throttled`: a token refused because tokens named new tenants faster
/// than their keys may be fetched, or than a tenant resolver may be asked
/// (the refusal's own reason is `keys_unavailable` or `unknown_issuer`).
/// Many `throttled` or `evicted` with few `started` tenants in use: tokens
/// naming tenants at random (a probe or a flood), or `max_tenants` too low.
pub const TENANT_EVENTS: &str = "palisade_jwt_tenant_events_total";
/// Kerberos ticket checks (GSSAPI accepts) running now, on a request's
/// worker or the blocking pool: gauge. (The name is kept from when all ran
/// on the pool.)
pub const SPNEGO_BLOCKING: &str = "palisade_spnego_blocking_in_flight";
/// Kerberos ticket checks (GSSAPI accepts) made: counter.
pub const SPNEGO_BLOCKING_CALLS: &str = "palisade_spnego_blocking_calls_total";
/// Kerberos tickets answered 503 because no GSSAPI permit came free within
/// the queue timeout: counter.
pub const SPNEGO_SHED: &str = "palisade_spnego_shed_total";
/// Credentials refused, by method and reason: counter. The reason is the
/// authenticator's short name for it (JWT: `expired`, `unknown_key`,
/// `keys_unavailable`, `bad_signature`, … as `JwtError::reason`), or the
/// refusal's kind (`invalid_token`, `invalid_negotiate`, …): a few fixed
/// names, never a value from the request. Alerts tell the issuer's outage
/// (`keys_unavailable`, `introspection_unavailable`) or this clock
/// (`issued_in_future`, `not_yet_valid`) from clients' expired or forged
/// tokens.
pub const AUTHENTICATION_FAILURES: &str = "palisade_authentication_failures_total";
/// Policy reloads, by result: counter.
pub const CONFIG_RELOADS: &str = "palisade_config_reloads_total";
/// Whether the last reload of the policy file put it in force (1) or was
/// refused, or the file cannot be read (0): gauge, as Prometheus's own
/// `prometheus_config_last_reload_successful`. A counter's increase fires
/// an alert once and clears; this stays 0 while the file on disk is one a
/// restart would refuse to start with.
pub const CONFIG_LAST_RELOAD_OK: &str = "palisade_config_last_reload_successful";
/// When a policy file was last put in force (at start-up, then each
/// successful reload): gauge, seconds since the Unix epoch.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "palisade_config_last_reload_success_timestamp_seconds";

/// Bucket bounds (seconds) for [`CHECK_DURATION`] with an exporter that
/// needs them (Prometheus): from 1 µs, where a cached token is decided, to
/// 5 s, the longest a key fetch may hold a request.
pub const CHECK_DURATION_BUCKETS: &[f64] = &[
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.5, 5.0,
];

/// Gives every metric above its description and unit in the installed
/// recorder (the `# HELP` lines of Prometheus), and puts the reload
/// counter on it at zero, so that it is there before any reload. Optional;
/// call it once after installing the recorder.
pub fn describe() {
    metrics::describe_counter!(DECISIONS, "Requests decided by the Palisade guard");
    metrics::describe_counter!(AUTHENTICATIONS, "Credentials checked, by method and result");
    metrics::describe_counter!(
        AUTHENTICATION_FAILURES,
        "Credentials refused, by method and reason"
    );
    metrics::describe_histogram!(
        CHECK_DURATION,
        Unit::Seconds,
        "Time the guard took to decide a request"
    );
    metrics::describe_counter!(
        CHECKS_CANCELLED,
        "Checks whose request went away before they were decided"
    );
    metrics::describe_counter!(JWKS_FETCHES, "Fetches of an issuer's JSON Web Key Set");
    metrics::describe_counter!(TOKEN_CACHE, "Lookups in the verified-token cache");
    metrics::describe_counter!(
        INTROSPECTIONS,
        "Calls to an issuer's token introspection endpoint"
    );
    metrics::describe_gauge!(
        SPNEGO_BLOCKING,
        "Kerberos ticket checks (GSSAPI accepts) running now"
    );
    metrics::describe_counter!(
        SPNEGO_BLOCKING_CALLS,
        "Kerberos ticket checks (GSSAPI accepts) made"
    );
    metrics::describe_counter!(
        SPNEGO_SHED,
        "Kerberos tickets answered 503: no GSSAPI permit within the queue timeout"
    );
    metrics::describe_counter!(CONFIG_RELOADS, "Policy reloads, by result");
    metrics::describe_gauge!(
        CONFIG_LAST_RELOAD_OK,
        "Whether the last reload of the policy file put it in force"
    );
    metrics::describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When a policy file was last put in force, in seconds since the Unix epoch"
    );
    // On /metrics from the start, at zero, whether the file is reloaded
    // or not (the example services' contract lists it).
    for result in ["success", "failure"] {
        metrics::counter!(CONFIG_RELOADS, "result" => result).increment(0);
    }
}

/// One policy's decision counters.
struct PolicyCounters {
    /// The policy's interned name: two policies of one name (of two
    /// kinds) differ by their action.
    name: &'static str,
    action: Action,
    allow: Counter,
    deny: Counter,
}

/// An authenticator's counters.
pub(crate) struct AuthnCounters {
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    method: &'static str,
}

impl AuthnCounters {
    /// Counts an authenticator's outcome: a credential accepted or refused
    /// (and why).
    pub(crate) fn count(&self, outcome: &AuthOutcome) {
        match outcome {
            AuthOutcome::Authenticated(_) => self.success.increment(1),
            AuthOutcome::Rejected(r) => self.refused(r.reason()),
            AuthOutcome::NoCredential | AuthOutcome::Respond(_) => {}
        }
    }

    /// Counts a credential refused for `reason` (a fixed name).
    pub(crate) fn refused(&self, reason: &'static str) {
        self.failure.increment(1);
        // Looked up at each refusal (few, and off the path of a request
        // let in); a recorder keeps one series per fixed reason.
        metrics::counter!(AUTHENTICATION_FAILURES, "method" => self.method, "reason" => reason).increment(1);
    }

    fn new(method: &'static str) -> Self {
        Self {
            success: metrics::counter!(AUTHENTICATIONS, "method" => method, "result" => "success"),
            failure: metrics::counter!(AUTHENTICATIONS, "method" => method, "result" => "failure"),
            method,
        }
    }
}

/// The handles one compiled guard reports through, registered once.
pub(crate) struct GuardMetrics {
    allow: Counter,
    deny: Counter,
    reply: Counter,
    cancelled: Counter,
    policies: Vec<PolicyCounters>,
    /// One per authenticator, in the guard's order.
    pub(crate) authenticators: Vec<AuthnCounters>,
    pub(crate) mtls: AuthnCounters,
    duration: Histogram,
    /// Whether `duration` records anything: true until a check finds it
    /// does not. A handle is bound to the recorder installed when it was
    /// registered, so the answer never changes, and without a recorder a
    /// check reads no clock.
    timed: AtomicBool,
}

/// A check's duration, read from the clock only when a recorder asks for
/// it (`metrics` converts a value only for a live handle); `asked` says
/// whether it did.
struct Elapsed<'a> {
    started: quanta::Instant,
    asked: &'a mut bool,
}

impl IntoF64 for Elapsed<'_> {
    fn into_f64(self) -> f64 {
        *self.asked = true;
        self.started.elapsed().as_secs_f64()
    }
}

impl GuardMetrics {
    /// The start of a check, when its duration is recorded.
    pub(crate) fn start(&self) -> Option<quanta::Instant> {
        self.timed.load(Ordering::Relaxed).then(quanta::Instant::now)
    }

    /// Records the duration of a check that began at `started`.
    pub(crate) fn finish(&self, started: Option<quanta::Instant>) {
        let Some(started) = started else { return };
        let mut asked = false;
        self.duration.record(Elapsed {
            started,
            asked: &mut asked,
        });
        if !asked {
            self.timed.store(false, Ordering::Relaxed);
        }
    }

    /// Whether checks are still timed.
    #[cfg(test)]
    pub(crate) fn timed(&self) -> bool {
        self.timed.load(Ordering::Relaxed)
    }

    pub(crate) fn new(authenticators: &[Arc<dyn Authenticator>], access: &AccessPolicy) -> Self {
        // quanta calibrates its clock once per process, on first use
        // (0.6 ms here, at most 200 ms): at start-up, not in a request.
        let _ = quanta::Instant::now();
        let none = |decision: &'static str| metrics::counter!(DECISIONS, "decision" => decision, "policy" => "", "action" => "");
        let policies = access
            .policies()
            .map(|(name, action)| {
                let counter = |decision: &'static str| {
                    metrics::counter!(
                        DECISIONS,
                        "decision" => decision,
                        "policy" => name.to_string(),
                        "action" => action.as_str()
                    )
                };
                PolicyCounters {
                    name,
                    action,
                    allow: counter("allow"),
                    deny: counter("deny"),
                }
            })
            .collect();
        Self {
            allow: none("allow"),
            deny: none("deny"),
            reply: none("reply"),
            cancelled: metrics::counter!(CHECKS_CANCELLED),
            policies,
            authenticators: authenticators
                .iter()
                .map(|a| AuthnCounters::new(a.method().map_or("custom", |m| m.as_str())))
                .collect(),
            mtls: AuthnCounters::new("mtls"),
            duration: metrics::histogram!(CHECK_DURATION),
            timed: AtomicBool::new(true),
        }
    }

    /// Counts a decision; `access` is what decided it, when a policy did.
    pub(crate) fn decided(&self, allowed: bool, access: Option<&AccessDecision>) {
        let by_policy = access
            .and_then(|a| Some((a.policy_name()?, a.action()?)))
            .and_then(|(name, action)| {
                self.policies
                    .iter()
                    .find(|p| std::ptr::eq(p.name, name) && p.action == action)
            });
        match (by_policy, allowed) {
            (Some(p), true) => p.allow.increment(1),
            (Some(p), false) => p.deny.increment(1),
            (None, true) => self.allow.increment(1),
            (None, false) => self.deny.increment(1),
        }
    }

    /// Counts an answer Palisade gave in the application's place.
    pub(crate) fn replied(&self) {
        self.reply.increment(1);
    }

    /// Counts a check dropped before it was decided.
    pub(crate) fn cancelled(&self) {
        self.cancelled.increment(1);
    }
}
