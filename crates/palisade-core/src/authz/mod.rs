//! Access control: Istio `AuthorizationPolicy` (and the older
//! `ServiceRole`/`ServiceRoleBinding`) evaluated in process, and role
//! requirements written in code.
//!
//! ```
//! use palisade_core::authz::AccessPolicy;
//! use palisade_core::policy::{PolicySet, Workload};
//! use palisade_core::authn::OwnedRequest;
//! let set = PolicySet::from_yaml_str(r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: require-jwt}
//! spec:
//!   rules:
//!   - from: [{source: {requestPrincipals: ["*"]}}]
//!   - to: [{operation: {paths: ["/healthz"]}}]
//! "#, "p.yaml")?;
//! let policy = AccessPolicy::compile(&set.for_workload(&Workload::new("details", "default")))?;
//! assert!(policy.evaluate(&OwnedRequest::get("/healthz"), None).is_allowed());
//! assert!(!policy.evaluate(&OwnedRequest::get("/list"), None).is_allowed());
//! // The path is normalised first, as Istio does: no way around a rule.
//! assert!(!policy.evaluate(&OwnedRequest::get("/healthz/../list"), None).is_allowed());
//! # Ok::<(), palisade_core::policy::PolicyError>(())
//! ```
//!
//! # Semantics
//! Istio's, exactly: `CUSTOM` policies first (a matching one asks its
//! [`ExternalAuthorizer`]), then `DENY` (any match denies), then `ALLOW` (no
//! ALLOW policy means allow; otherwise some rule must match). `AUDIT`
//! policies are logged. A rule matches when every field present matches;
//! `from` and `to` entries are alternatives, `when` conditions all hold.
//! `spec: {}` denies everything, `rules: [{}]` allows everything. A policy
//! with the annotation `istio.io/dry-run: "true"` (any of Go's `ParseBool`
//! spellings of true, as Istio reads it: `True`, `t`, `1`, …) is evaluated
//! and reported ([`AccessDecision::dry_run`], an info log line,
//! [`AccessPolicy::metrics`]) but never enforced; the annotation is for
//! `ALLOW` and `DENY` policies only, refused on `AUDIT` and `CUSTOM` ones
//! and on every other kind, as Istio's validation refuses it.
//!
//! Rules are compiled into matchers and indexed by what every request they
//! match must have: the literal prefix of their paths, else an exact host,
//! else the exact value of one attribute (a claim, a principal, a header,
//! a namespace). Evaluation thus meets only the rules that can match the
//! request and those that fit no index: a 10,000-rule policy costs about
//! what a 10-rule one does, whatever its rules test (see
//! `benches/README.md`).

mod attr;
mod builder;
pub(crate) mod compile;
mod custom;
mod matcher;
pub(crate) mod path;
pub(crate) mod rbac;
mod require;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use self::builder::{AccessPolicyBuilder, Rule};
pub use self::custom::{CheckRequest, ExternalAuthorizer, ExternalAuthorizers, ExternalDecision};
pub use self::path::EscapedSlashes;
pub use self::require::{Requirement, Requires, authenticated, client_role, realm_role, scope};

use self::attr::{Clause, Ctx, SplitClaims, StrAttr, Test, any_value};
use self::custom::Registered;
use self::matcher::StrMatch;
use crate::check::Check;
use crate::identity::Identity;
use crate::policy::{PolicyError, WorkloadPolicy};
use crate::request::{OwnedRequest, RequestHead};
use crate::striped::Striped;

/// Log target of authorization decisions.
pub const LOG_TARGET: &str = "palisade::authz";

/// What a policy does when one of its rules matches (`spec.action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Action {
    /// Allows the request (when no DENY matched); the default.
    #[default]
    Allow,
    /// Denies the request.
    Deny,
    /// Logs the match; no effect on the decision.
    Audit,
    /// Asks an external authorizer.
    Custom,
}

impl Action {
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    /// Any group may match; each group's clauses must all hold. Empty: matches.
    from: Vec<Vec<Clause>>,
    to: Vec<Vec<Clause>>,
    when: Vec<Clause>,
}

impl CompiledRule {
    pub(crate) fn new(from: Vec<Vec<Clause>>, to: Vec<Vec<Clause>>, when: Vec<Clause>) -> Self {
        Self { from, to, when }
    }

    #[inline]
    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        let group = |g: &Vec<Clause>| g.iter().all(|c| c.holds(ctx));
        (self.to.is_empty() || self.to.iter().any(group))
            && (self.from.is_empty() || self.from.iter().any(group))
            && self.when.iter().all(|c| c.holds(ctx))
    }

    fn reads_end_user(&self) -> bool {
        self.clauses().any(Clause::reads_end_user)
    }

    fn clauses(&self) -> impl Iterator<Item = &Clause> {
        self.from.iter().chain(&self.to).flatten().chain(&self.when)
    }

    /// Where this rule is indexed: under the literal prefixes of its paths
    /// when they say more than `/`, else under its exact hosts, else under
    /// the exact values one string attribute must have (a claim, a
    /// principal, a header), else under its prefixes, else nowhere (it is
    /// tried for every request).
    fn index_keys(&self) -> Keys<'_> {
        let prefixes = self.path_keys();
        if let Some(p) = &prefixes
            && p.iter().all(|k| *k != "/")
        {
            return Keys::Prefixes(p.clone());
        }
        if let Some(hosts) = self.host_keys() {
            return Keys::Hosts(hosts);
        }
        if let Some((attr, values)) = self.value_keys() {
            return Keys::Values(attr, values);
        }
        prefixes.map_or(Keys::Any, Keys::Prefixes)
    }

    /// Whether a request found under one of `keys` surely matches: the
    /// rule has one condition, and it is what the keys stand for (one of
    /// exact values of an attribute, exact hosts, or paths that are
    /// prefixes ending in `/`, each its own key).
    fn proven_by(&self, keys: &Keys<'_>) -> bool {
        let mut clauses = self.clauses();
        let (Some(only), None) = (clauses.next(), clauses.next()) else {
            return false;
        };
        if only.negate {
            return false;
        }
        match (keys, &only.test) {
            // A request principal's exact value is matched as an issuer and
            // a subject (Istio's split at the last `/`): the whole string's
            // key finds it, but does not prove it (a subject with a `/`).
            (Keys::Values(attr, _), Test::Str(a, ms)) => {
                a == *attr && *a != StrAttr::RequestPrincipal && exact(ms).is_some()
            }
            // Compared ignoring ASCII case, as the keys are in lower case.
            (Keys::Hosts(_), Test::Host(ms)) => exact(ms).is_some(),
            (Keys::Prefixes(_), Test::Path(ms)) => ms
                .iter()
                .all(|m| matches!(m, matcher::PathMatch::Str(StrMatch::Prefix(p)) if p.ends_with('/'))),
            _ => false,
        }
    }

    /// The literal path prefixes one of which every matching path starts with.
    fn path_keys(&self) -> Option<Vec<&str>> {
        let mut keys = Vec::new();
        for ms in every_group(&self.to, |t| match t {
            Test::Path(ms) => Some(ms),
            _ => None,
        })? {
            for m in ms.iter() {
                keys.push(m.index_key()?);
            }
        }
        Some(keys)
    }

    /// The hosts, in lower case, one of which every matching `Host` is.
    fn host_keys(&self) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        for ms in every_group(&self.to, |t| match t {
            Test::Host(ms) => Some(ms),
            _ => None,
        })? {
            keys.extend(exact(ms)?.into_iter().map(str::to_ascii_lowercase));
        }
        Some(keys)
    }

    /// A string attribute (not the method: too few values to tell rules
    /// apart) and the exact values one of which it must have.
    fn value_keys(&self) -> Option<(&StrAttr, Vec<&str>)> {
        // A request principal without a `/` is an issuer with an empty
        // subject (Istio's split), whose key is `ISSUER/`: not its own
        // string, so a rule is not indexed by values with one.
        fn indexable(attr: &StrAttr, values: &[&str]) -> bool {
            *attr != StrAttr::RequestPrincipal || values.iter().all(|v| v.contains('/'))
        }
        fn str_test(c: &Clause) -> Option<(&StrAttr, Vec<&str>)> {
            match &c.test {
                Test::Str(attr, ms) if !c.negate && *attr != StrAttr::Method => {
                    Some((attr, exact(ms)?)).filter(|(a, v)| indexable(a, v))
                }
                _ => None,
            }
        }
        if let Some(found) = self.when.iter().find_map(str_test) {
            return Some(found);
        }
        for groups in [&self.from, &self.to] {
            let Some(first) = groups.first() else { continue };
            for (attr, _) in first.iter().filter_map(str_test) {
                let all = every_group(groups, |t| match t {
                    Test::Str(a, ms) if a == attr => Some(ms),
                    _ => None,
                });
                if let Some(all) = all
                    && let Some(values) = all.into_iter().map(|ms| exact(ms)).collect::<Option<Vec<_>>>()
                    && indexable(attr, &values.concat())
                {
                    return Some((attr, values.concat()));
                }
            }
        }
        None
    }
}

/// For `groups` (alternatives, none empty), the operand of a positive
/// clause that `pick` takes in each: `None` when there is no group or a
/// group has no such clause.
fn every_group<'r, T: ?Sized>(
    groups: &'r [Vec<Clause>],
    pick: impl Fn(&'r Test) -> Option<&'r T>,
) -> Option<Vec<&'r T>> {
    if groups.is_empty() {
        return None;
    }
    groups
        .iter()
        .map(|g| g.iter().filter(|c| !c.negate).find_map(|c| pick(&c.test)))
        .collect()
}

/// The values when every matcher is an exact one.
fn exact(ms: &[StrMatch]) -> Option<Vec<&str>> {
    if ms.is_empty() {
        return None;
    }
    ms.iter()
        .map(|m| match m {
            StrMatch::Exact(v) => Some(&**v),
            _ => None,
        })
        .collect()
}

/// Where a rule is indexed ([`CompiledRule::index_keys`]).
enum Keys<'r> {
    Any,
    Prefixes(Vec<&'r str>),
    Hosts(Vec<String>),
    Values(&'r StrAttr, Vec<&'r str>),
}

pub(crate) struct CompiledPolicy {
    /// Interned ([`intern`]): a decision names its policy without a
    /// reference count every thread writes.
    name: &'static str,
    action: Action,
    dry_run: bool,
    rules: Vec<CompiledRule>,
    provider: Option<(Arc<str>, Registered)>,
    /// The index of its first rule's counter in [`Engine::matched`].
    first_rule: usize,
    /// Where its rules are written, when not one to one: each compiled
    /// rule's index among the document's rules, and how many it writes. A
    /// `ServiceRoleBinding` compiles only its role's rules that name the
    /// workload; its decisions and counters still name the role's rules.
    written: Option<(Box<[u32]>, usize)>,
}

/// `name`, kept for the process's life: each distinct policy name once,
/// whatever the reloads.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let names = names.get_or_insert_with(Default::default);
    if let Some(known) = names.get(name) {
        return known;
    }
    let name: &'static str = Box::leak(name.into());
    names.insert(name);
    name
}

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("dry_run", &self.dry_run)
            .field("rules", &self.rules.len())
            .field("provider", &self.provider.as_ref().map(|(n, _)| n))
            .finish()
    }
}

impl CompiledPolicy {
    pub(crate) fn new(
        name: String,
        action: Action,
        dry_run: bool,
        rules: Vec<CompiledRule>,
        provider: Option<(Arc<str>, Registered)>,
    ) -> Self {
        Self {
            name: intern(&name),
            action,
            dry_run,
            rules,
            provider,
            first_rule: 0,
            written: None,
        }
    }

    /// `self`, whose rule `i` is rule `written[i]` of the `count` its
    /// document writes.
    pub(crate) fn written_as(mut self, written: Vec<u32>, count: usize) -> Self {
        debug_assert_eq!(written.len(), self.rules.len());
        self.written = Some((written.into(), count));
        self
    }

    /// The index, as written, of compiled rule `rule`.
    fn written_index(&self, rule: usize) -> usize {
        match &self.written {
            None => rule,
            Some((written, _)) => written[rule] as usize,
        }
    }

    /// How many rules its document writes.
    fn written_count(&self) -> usize {
        self.written.as_ref().map_or(self.rules.len(), |(_, n)| *n)
    }
}

/// (policy, rule), ordered as written.
type Entry = (u32, u32);

/// A rule under a key, and whether being found under the key proves that
/// it matches (its one condition is what the key stands for).
type Listed = (Entry, bool);

type Lists = HashMap<Box<str>, Vec<Listed>, foldhash::fast::RandomState>;

/// The rules of one action, each under the keys that every request it
/// matches has: a path prefix, a host, or the value of a string attribute
/// (see [`CompiledRule::index_keys`]). A request is tried against the rules
/// under its own keys and those indexed nowhere, so evaluation does not
/// grow with rules that cannot match it.
#[derive(Debug, Default)]
struct Index {
    /// Rules that can match any request.
    any: Vec<Listed>,
    /// Rules whose every matching path starts with the key (which ends in `/`).
    by_prefix: Lists,
    /// Bit `n` set: a key of `by_prefix` has `n + 1` slashes (bit 63: 64 or
    /// more), so a path is looked up only at the depths some key has.
    prefix_depths: u64,
    /// Rules whose every matching `Host` is the key, in lower case.
    by_host: Lists,
    /// For each attribute, rules whose every match has the key among the
    /// attribute's values.
    by_value: Vec<(StrAttr, Lists)>,
}

/// The bit of [`Index::prefix_depths`] for a key of `slashes` slashes.
fn depth_bit(slashes: usize) -> u64 {
    1 << (slashes.clamp(1, 64) - 1)
}

/// Below this many rules, one list is faster than hashing path prefixes.
const INDEX_THRESHOLD: usize = 4;

impl Index {
    fn build(policies: &[CompiledPolicy], pick: impl Fn(&CompiledPolicy) -> bool) -> Self {
        let mut idx = Index::default();
        let total: usize = policies.iter().filter(|p| pick(p)).map(|p| p.rules.len()).sum();
        for (pi, p) in policies.iter().enumerate().filter(|(_, p)| pick(p)) {
            for (ri, r) in p.rules.iter().enumerate() {
                let entry = (pi as u32, ri as u32);
                let keys = if total > INDEX_THRESHOLD {
                    r.index_keys()
                } else {
                    Keys::Any
                };
                let proven = r.proven_by(&keys);
                let prefixes = matches!(keys, Keys::Prefixes(_));
                let (lists, mut keys): (&mut Lists, Vec<&str>) = match &keys {
                    Keys::Any => {
                        idx.any.push((entry, false));
                        continue;
                    }
                    Keys::Prefixes(keys) => (&mut idx.by_prefix, keys.clone()),
                    Keys::Hosts(keys) => (&mut idx.by_host, keys.iter().map(String::as_str).collect()),
                    Keys::Values(attr, keys) => {
                        let at = match idx.by_value.iter().position(|(a, _)| a == *attr) {
                            Some(at) => at,
                            None => {
                                idx.by_value.push(((*attr).clone(), Lists::default()));
                                idx.by_value.len() - 1
                            }
                        };
                        (&mut idx.by_value[at].1, keys.clone())
                    }
                };
                keys.sort_unstable();
                keys.dedup();
                if prefixes {
                    for k in &keys {
                        idx.prefix_depths |= depth_bit(k.bytes().filter(|&b| b == b'/').count());
                    }
                }
                for k in keys {
                    lists.entry(k.into()).or_default().push((entry, proven));
                }
            }
        }
        idx
    }

    fn is_empty(&self) -> bool {
        self.any.is_empty()
            && self.by_prefix.is_empty()
            && self.by_host.is_empty()
            && self.by_value.is_empty()
    }

    /// Calls `f` with each candidate list for the request, until it
    /// returns true.
    #[inline]
    fn candidates<'s>(&'s self, ctx: &Ctx<'_>, f: &mut dyn FnMut(&'s [Listed]) -> bool) {
        if !self.any.is_empty() && f(&self.any) {
            return;
        }
        if !self.by_prefix.is_empty() {
            let path = ctx.path;
            let mut slashes = 0;
            for (i, b) in path.bytes().enumerate() {
                if b != b'/' {
                    continue;
                }
                slashes += 1;
                if self.prefix_depths & depth_bit(slashes) != 0
                    && let Some(list) = self.by_prefix.get(&path[..=i])
                    && f(list)
                {
                    return;
                }
            }
        }
        if !self.by_host.is_empty()
            && let Some(host) = ctx.req.host()
        {
            let list = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(host.to_ascii_lowercase().as_str())
            } else {
                self.by_host.get(host)
            };
            if let Some(list) = list
                && f(list)
            {
                return;
            }
        }
        for (attr, lists) in &self.by_value {
            let stop = any_value(attr, ctx, &mut |v| lists.get(v).is_some_and(|list| f(list)));
            if stop {
                return;
            }
        }
    }

    /// Whether every rule is tried for every request (none indexed): a
    /// small policy's rules, or rules that fit no index.
    fn unindexed(&self) -> bool {
        self.by_prefix.is_empty() && self.by_host.is_empty() && self.by_value.is_empty()
    }

    /// [`first`](Self::first) of an [`unindexed`](Self::unindexed) index:
    /// its one list, in order, without the candidate lists' callback.
    #[inline]
    fn first_unindexed(&self, policies: &[CompiledPolicy], ctx: &Ctx<'_>) -> Option<Entry> {
        self.any
            .iter()
            .find(|&&(e, proven)| proven || policies[e.0 as usize].rules[e.1 as usize].matches(ctx))
            .map(|&(e, _)| e)
    }

    /// The first matching rule, in the order written.
    fn first(&self, policies: &[CompiledPolicy], ctx: &Ctx<'_>) -> Option<Entry> {
        let mut best: Option<Entry> = None;
        self.candidates(ctx, &mut |list| {
            for &(e, proven) in list {
                if best.is_some_and(|b| e >= b) {
                    break;
                }
                if proven || policies[e.0 as usize].rules[e.1 as usize].matches(ctx) {
                    best = Some(e);
                    break;
                }
            }
            false
        });
        best
    }

    /// Every matching rule's policy, at most once each, in order.
    fn all(&self, policies: &[CompiledPolicy], ctx: &Ctx<'_>) -> Vec<Entry> {
        let mut hits: Vec<Entry> = Vec::new();
        self.candidates(ctx, &mut |list| {
            for &(e, proven) in list {
                if !hits.iter().any(|h| h.0 == e.0)
                    && (proven || policies[e.0 as usize].rules[e.1 as usize].matches(ctx))
                {
                    hits.push(e);
                }
            }
            false
        });
        hits.sort_unstable();
        hits
    }
}

/// Engine-wide settings (Palisade's `AuthorizationSettings` document).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthzSettings {
    /// Istio's `numTrustedProxies` for `remote.ip`.
    pub trusted_proxies: usize,
    /// What `%2F`, `%5C` and `\` in a path do.
    pub escaped_slashes: EscapedSlashes,
    /// Say which policy decided in an `x-palisade-authz` response header
    /// (a debug switch).
    pub explain_header: bool,
    /// Origins whose requests may use the credentials a browser sends by
    /// itself whatever their method (`trustedOrigins`; see
    /// `GuardBuilder::trusted_origin`), as given.
    pub trusted_origins: Vec<String>,
    /// The mesh's trust domains, its own first, then its aliases
    /// (`trustDomain`, `trustDomainAliases`), which a policy's
    /// `cluster.local/ns/NS/sa/SA` principals name as in Istio; empty
    /// (neither set): principals as written.
    pub trust_domains: Vec<String>,
}

#[derive(Debug, Default)]
struct Engine {
    /// Built in code ([`AccessPolicy::builder`], [`AccessPolicy::allow_all`]),
    /// not compiled from a policy file: what the guard says at start-up of
    /// a policy that requires nothing is said in code's terms.
    in_code: bool,
    policies: Vec<CompiledPolicy>,
    custom: Index,
    deny: Index,
    allow: Index,
    audit: Index,
    dry_deny: Index,
    dry_allow: Index,
    has_allow: bool,
    has_dry_allow: bool,
    /// Whether some enforced ALLOW rule reads the end-user credential.
    allow_reads_end_user: bool,
    /// Whether an enforced DENY rule reads the end user (Istio's other way
    /// to require a token: `notRequestPrincipals: ["*"]`).
    deny_reads_end_user: bool,
    /// Whether the enforced ALLOW rules, none indexed, are all there is
    /// (no CUSTOM, DENY, AUDIT or dry-run policy): the common small policy
    /// (`require_authenticated`, one role), decided without the indexes'
    /// candidate lists.
    allow_only: bool,
    reads_path: bool,
    /// Whether some enforced rule or external authorizer reads the host: a
    /// request whose host is ambiguous
    /// ([`ambiguous_host`](crate::adapter::ambiguous_host)) is refused.
    reads_host: bool,
    /// Whether some rule reads the connection's remote or local address:
    /// a request whose server gives none is refused rather than decided as
    /// if no such rule could match (a DENY on `ipBlocks` or `ports` would
    /// never fire).
    reads_remote_addr: bool,
    reads_local_addr: bool,
    /// `remote.ip` read behind trusted proxies: unknown only when neither
    /// `X-Forwarded-For` nor the connection gives it.
    reads_forwarded: bool,
    /// Whether some enforced rule reads `connection.sni`: a request whose
    /// server gives no connection facts is refused, as for addresses (a
    /// TLS listener Palisade cannot see into would let a DENY on the name
    /// never fire); a plain connection Palisade's servers describe has
    /// none, as in Istio.
    reads_sni: bool,
    headers: Vec<String>,
    settings: AuthzSettings,
    /// The claims `request.auth.claims[…]` splits on spaces, per issuer.
    split_claims: SplitClaims,
    /// How many evaluated requests each rule was the matching one of, all
    /// policies' rules in order.
    matched: Striped,
}

/// The policy name of [`AccessDecision::addresses_unknown`]'s refusal.
const ADDRESSES_UNKNOWN: &str = "(the connection's addresses are unknown)";
/// The policy name of [`AccessDecision::server_name_unknown`]'s refusal.
const SERVER_NAME_UNKNOWN: &str = "(the connection's server name is unknown)";

impl Engine {
    fn new(mut policies: Vec<CompiledPolicy>, allow_by_rbac: bool, settings: AuthzSettings) -> Self {
        let mut rules = 0;
        for p in &mut policies {
            p.first_rule = rules;
            rules += p.rules.len();
        }
        let live = |a: Action| move |p: &CompiledPolicy| p.action == a && !p.dry_run;
        let dry = |a: Action| move |p: &CompiledPolicy| p.action == a && p.dry_run;
        let mut headers: Vec<String> = Vec::new();
        // An external authorizer is sent the host and the path.
        let mut reads_host = policies.iter().any(live(Action::Custom));
        let mut reads_path = reads_host;
        let (mut reads_remote_addr, mut reads_local_addr, mut reads_forwarded) = (false, false, false);
        let mut reads_sni = false;
        for p in &policies {
            if let Some((_, r)) = &p.provider {
                headers.extend(r.headers.iter().cloned());
            }
            // Only an enforced decision refuses for want of an address: a
            // dry-run or AUDIT policy is reported, never in the way.
            let enforced = !p.dry_run && p.action != Action::Audit;
            for c in p.rules.iter().flat_map(CompiledRule::clauses) {
                reads_path |= c.reads_path();
                reads_host |= enforced && c.reads_host();
                reads_remote_addr |= enforced && c.reads_remote_addr();
                reads_local_addr |= enforced && c.reads_local_addr();
                reads_forwarded |= enforced && c.reads_remote_ip();
                reads_sni |= enforced && c.reads_sni();
                if let Some(h) = c.header() {
                    headers.push(h.to_owned());
                }
            }
        }
        headers.sort();
        headers.dedup();
        let custom = Index::build(&policies, live(Action::Custom));
        let deny = Index::build(&policies, live(Action::Deny));
        let allow = Index::build(&policies, live(Action::Allow));
        let audit = Index::build(&policies, |p| p.action == Action::Audit);
        let dry_deny = Index::build(&policies, dry(Action::Deny));
        let dry_allow = Index::build(&policies, dry(Action::Allow));
        let allow_only = allow.unindexed()
            && [&custom, &deny, &audit, &dry_deny, &dry_allow]
                .iter()
                .all(|i| i.is_empty());
        Self {
            in_code: false,
            custom,
            deny,
            allow,
            audit,
            dry_deny,
            dry_allow,
            allow_only,
            has_allow: allow_by_rbac || policies.iter().any(live(Action::Allow)),
            has_dry_allow: policies.iter().any(dry(Action::Allow)),
            allow_reads_end_user: policies
                .iter()
                .filter(|p| live(Action::Allow)(p))
                .flat_map(|p| &p.rules)
                .any(CompiledRule::reads_end_user),
            deny_reads_end_user: policies
                .iter()
                .filter(|p| live(Action::Deny)(p))
                .flat_map(|p| &p.rules)
                .any(CompiledRule::reads_end_user),
            reads_path,
            reads_host,
            // Without trusted proxies, `remote.ip` is the connection's.
            reads_remote_addr: reads_remote_addr || (reads_forwarded && settings.trusted_proxies == 0),
            reads_local_addr,
            reads_forwarded: reads_forwarded && settings.trusted_proxies > 0,
            reads_sni,
            headers,
            settings,
            policies,
            split_claims: SplitClaims::default(),
            matched: Striped::new(rules),
        }
    }

    fn hit(&self, e: Entry) -> (&'static str, usize) {
        let p = &self.policies[e.0 as usize];
        self.matched.add(p.first_rule + e.1 as usize);
        (p.name, p.written_index(e.1 as usize))
    }

    /// DENY, then ALLOW; CUSTOM has been handled by the caller.
    fn decide(&self, ctx: &Ctx<'_>) -> AccessDecision {
        if self.allow_only {
            // What the rest would decide with no DENY, AUDIT or dry-run
            // policy to meet: the first ALLOW rule that matches, if any.
            if !self.has_allow {
                return AccessDecision::default_allow();
            }
            return match self.allow.first_unindexed(&self.policies, ctx) {
                Some(e) => AccessDecision::by(true, Action::Allow, self.hit(e)),
                None => AccessDecision {
                    end_user_could_help: self.allow_reads_end_user,
                    ..AccessDecision::no_allow_matched()
                },
            };
        }
        if !self.audit.is_empty() {
            for e in self.audit.all(&self.policies, ctx) {
                let (policy, rule) = self.hit(e);
                tracing::info!(target: LOG_TARGET, %policy, rule, method = ctx.req.method(), path = ctx.path, "AUDIT policy matched");
            }
        }
        let deny = self.deny.first(&self.policies, ctx);
        let mut decision = match deny {
            Some(e) => {
                let mut d = AccessDecision::by(false, Action::Deny, self.hit(e));
                d.end_user_could_help = self.policies[e.0 as usize].rules[e.1 as usize].reads_end_user();
                d
            }
            None if !self.has_allow => AccessDecision::default_allow(),
            None => match self.allow.first(&self.policies, ctx) {
                Some(e) => AccessDecision::by(true, Action::Allow, self.hit(e)),
                None => AccessDecision {
                    end_user_could_help: self.allow_reads_end_user,
                    ..AccessDecision::no_allow_matched()
                },
            },
        };
        if !self.dry_deny.is_empty() || !self.dry_allow.is_empty() {
            decision.dry_run = Some(Arc::new(self.shadow(ctx, deny)));
        }
        decision
    }

    /// The decision had dry-run policies been enforced too.
    fn shadow(&self, ctx: &Ctx<'_>, live_deny: Option<Entry>) -> DryRunReport {
        let report = |allowed: bool, e: Option<Entry>| DryRunReport {
            allowed,
            policy: e.map(|e| self.policies[e.0 as usize].name),
            rule: e.map(|e| self.policies[e.0 as usize].written_index(e.1 as usize)),
        };
        let dry_deny = self.dry_deny.first(&self.policies, ctx);
        let dry_allow = self.dry_allow.first(&self.policies, ctx);
        let r = if let Some(e) = live_deny.or(dry_deny) {
            report(false, Some(e))
        } else if !self.has_allow && !self.has_dry_allow {
            report(true, None)
        } else {
            match self.allow.first(&self.policies, ctx).or(dry_allow) {
                Some(e) => report(true, Some(e)),
                None => report(false, None),
            }
        };
        for e in [dry_deny, dry_allow].into_iter().flatten() {
            let (policy, rule) = self.hit(e);
            tracing::info!(target: LOG_TARGET, %policy, rule, shadow_allowed = r.allowed, method = ctx.req.method(), path = ctx.path, "dry-run policy matched");
        }
        r
    }
}

/// The shadow result of dry-run policies: what would have happened had they
/// been enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunReport {
    allowed: bool,
    policy: Option<&'static str>,
    rule: Option<usize>,
}

impl DryRunReport {
    /// Whether the request would be allowed with dry-run policies enforced.
    #[must_use]
    pub fn would_allow(&self) -> bool {
        self.allowed
    }

    /// The policy that would decide, `namespace/name`.
    #[must_use]
    pub fn policy(&self) -> Option<&str> {
        self.policy
    }

    /// Its matching rule, numbered as [`AccessDecision::rule`] numbers it.
    #[must_use]
    pub fn rule(&self) -> Option<usize> {
        self.rule
    }
}

/// The outcome of evaluating an [`AccessPolicy`], with its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessDecision {
    allowed: bool,
    action: Option<Action>,
    policy: Option<&'static str>,
    /// `u32`, with the other fields, keeps a decision small to move.
    rule: Option<u32>,
    dry_run: Option<Arc<DryRunReport>>,
    end_user_could_help: bool,
}

impl AccessDecision {
    fn by(allowed: bool, action: Action, (policy, rule): (&'static str, usize)) -> Self {
        Self {
            allowed,
            action: Some(action),
            policy: Some(policy),
            rule: u32::try_from(rule).ok(),
            dry_run: None,
            end_user_could_help: false,
        }
    }

    fn default_allow() -> Self {
        Self {
            allowed: true,
            action: None,
            policy: None,
            rule: None,
            dry_run: None,
            end_user_could_help: false,
        }
    }

    /// The refusal of a request whose server gives the policy none of the
    /// connection addresses its rules read; said once, as an error, with
    /// the fix.
    #[cold]
    #[inline(never)]
    fn addresses_unknown() -> Self {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::error!(
                target: LOG_TARGET,
                "the access policy reads connection addresses (ipBlocks, ports, source.ip, destination.*) and the server gives none: such requests are refused. With axum, serve with palisade::axum::serve or into_make_service_with_connect_info::<palisade::axum::ConnectAddrs>(); with actix-web bound to an unspecified address (0.0.0.0), add palisade::actix::on_connect to the HttpServer"
            );
        });
        Self::refused_unknown(ADDRESSES_UNKNOWN)
    }

    /// The refusal of a request whose server gives no connection facts,
    /// when the policy reads `connection.sni`; said once, as an error,
    /// with the fix.
    #[cold]
    #[inline(never)]
    fn server_name_unknown() -> Self {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::error!(
                target: LOG_TARGET,
                "the access policy reads connection.sni and the server gives no connection facts (a TLS listener Palisade cannot see into, or none recorded): such requests are refused. Serve TLS with palisade_mtls's servers (with actix-web's own TLS listener, add ServerTls::actix_on_connect); a plain listener with palisade::axum::serve, or palisade::actix::on_connect on the HttpServer"
            );
        });
        Self::refused_unknown(SERVER_NAME_UNKNOWN)
    }

    /// A refusal for want of a fact the policy reads, named `policy`.
    fn refused_unknown(policy: &'static str) -> Self {
        Self {
            allowed: false,
            action: Some(Action::Deny),
            policy: Some(policy),
            ..Self::default_allow()
        }
    }

    fn no_allow_matched() -> Self {
        Self {
            allowed: false,
            ..Self::default_allow()
        }
    }

    /// Whether the request may proceed.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The action of the policy that decided: `None` when no policy applied
    /// (allowed) or no ALLOW rule matched (denied).
    #[must_use]
    pub fn action(&self) -> Option<Action> {
        self.action
    }

    /// The `namespace/name` of the policy that decided, if one did.
    #[must_use]
    pub fn policy(&self) -> Option<&str> {
        self.policy
    }

    /// The deciding policy's name as the compiled policy holds it.
    pub(crate) fn policy_name(&self) -> Option<&'static str> {
        self.policy
    }

    /// The index of the rule that matched in that policy, as written: in an
    /// `AuthorizationPolicy`'s `spec.rules`; for a `ServiceRoleBinding`
    /// (whose policy is the binding), in its role's `spec.rules`.
    #[must_use]
    pub fn rule(&self) -> Option<usize> {
        self.rule.and_then(|r| usize::try_from(r).ok())
    }

    /// For a denial: whether the rules that decided read the end-user
    /// credential (request principal, claims, a role requirement), so a
    /// caller without one should be asked to authenticate (401) rather than
    /// be refused outright (403).
    #[must_use]
    pub fn end_user_could_help(&self) -> bool {
        !self.allowed && self.end_user_could_help
    }

    /// What dry-run policies would have decided, when any apply.
    #[must_use]
    pub fn dry_run(&self) -> Option<&DryRunReport> {
        self.dry_run.as_deref()
    }
}

impl fmt::Display for AccessDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match (&self.policy, self.rule, self.action) {
            (Some(p), Some(r), Some(a)) => write!(f, "{verdict} by {} policy {p} rule {r}", a.as_str())?,
            (Some(p), None, _) if *p == ADDRESSES_UNKNOWN => {
                write!(
                    f,
                    "{verdict}: the connection's addresses, which the policy reads, are unknown"
                )?;
            }
            (Some(p), None, _) if *p == SERVER_NAME_UNKNOWN => {
                write!(
                    f,
                    "{verdict}: the connection's TLS server name, which the policy reads, is unknown"
                )?;
            }
            (_, _, _) if self.allowed => write!(f, "{verdict}: no ALLOW policy applies")?,
            _ => write!(f, "{verdict}: no ALLOW rule matched")?,
        }
        if let Some(d) = &self.dry_run {
            let v = if d.allowed { "allow" } else { "deny" };
            write!(f, "; dry-run would {v}")?;
            if let (Some(p), Some(r)) = (&d.policy, d.rule) {
                write!(f, " by {p} rule {r}")?;
            }
        }
        Ok(())
    }
}

/// Counters of one policy, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyMetric {
    /// `namespace/name`.
    pub policy: String,
    /// Its action.
    pub action: Action,
    /// Whether it is a dry-run policy.
    pub dry_run: bool,
    /// How many evaluated requests one of its rules matched.
    pub matched: u64,
    /// How many of those each rule was the matching one of, by rule index
    /// as [`AccessDecision::rule`] gives it (its length is the number of
    /// rules the document writes; a `ServiceRole` rule that does not name
    /// this workload stays at 0): a rule at 0 has not
    /// decided, audited or shadowed any request yet, which is what
    /// `palisade test` reports as not reached.
    pub rules_matched: Vec<u64>,
}

/// A compiled set of access rules. A policy built in code and one loaded from
/// YAML are the same type. Cloning is an `Arc` clone.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy(Arc<Engine>);

/// A malformed request path (a bad percent-escape, or an escaped slash when
/// those are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedPath(&'static str);

impl fmt::Display for MalformedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for MalformedPath {}

impl AccessPolicy {
    /// Each policy's name and action.
    pub(crate) fn policies(&self) -> impl Iterator<Item = (&'static str, Action)> {
        self.0.policies.iter().map(|p| (p.name, p.action))
    }

    /// Every request is allowed, with or without credentials (Istio with no
    /// `AuthorizationPolicy`). Invalid credentials are still refused.
    #[must_use]
    pub fn allow_all() -> Self {
        Self(Arc::new(Engine {
            in_code: true,
            ..Engine::default()
        }))
    }

    /// Whether it was built in code (not compiled from a policy file).
    pub(crate) fn in_code(&self) -> bool {
        self.0.in_code
    }

    /// Only requests with an authenticated end user (`requestPrincipals: ["*"]`)
    /// are allowed. This is what the code builders use unless told otherwise.
    #[must_use]
    pub fn require_authenticated() -> Self {
        use self::attr::StrAttr;
        use self::matcher::StrMatch;
        let rule = CompiledRule::new(
            vec![vec![Clause {
                test: Test::Str(StrAttr::RequestPrincipal, vec![StrMatch::Any].into()),
                negate: false,
            }]],
            Vec::new(),
            Vec::new(),
        );
        let p = CompiledPolicy::new(
            "palisade/require-authenticated".into(),
            Action::Allow,
            false,
            vec![rule],
            None,
        );
        Self(Arc::new(Engine::new(vec![p], false, AuthzSettings::default())))
    }

    /// Compiles the `AuthorizationPolicy`, `ServiceRole`/`ServiceRoleBinding`
    /// (with `RbacConfig`) and `AuthorizationSettings` documents that apply to
    /// a workload. Its `RequestAuthentication` documents say which claims
    /// `request.auth.claims[…]` conditions split on spaces
    /// (`spaceDelimitedClaims`, besides `scope` and `permission`).
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field of anything that
    /// cannot be enforced exactly as written, including a `CUSTOM` policy
    /// (use [`AccessPolicy::compile_with`]).
    pub fn compile(workload: &WorkloadPolicy<'_>) -> Result<Self, PolicyError> {
        Self::compile_with(workload, &ExternalAuthorizers::default())
    }

    /// [`AccessPolicy::compile`] with the authorizers `CUSTOM` policies name.
    ///
    /// # Errors
    /// As [`AccessPolicy::compile`]; a `CUSTOM` policy naming an authorizer
    /// not in `authorizers`, or two naming different ones, is an error.
    pub fn compile_with(
        workload: &WorkloadPolicy<'_>,
        authorizers: &ExternalAuthorizers,
    ) -> Result<Self, PolicyError> {
        let settings = settings(workload)?;
        let mut policies = Vec::new();
        let mut provider: Option<Arc<str>> = None;
        for (doc, spec) in workload.authorization_policies() {
            let p = compile::compile_policy(workload, doc, spec, authorizers, &settings.trust_domains)?;
            if let Some((name, _)) = &p.provider {
                match &provider {
                    Some(prev) if prev != name => {
                        return Err(workload.error_at(
                            doc,
                            "spec.provider.name",
                            format!("only one CUSTOM provider per workload (as in Istio): `{prev}` is already used"),
                        ));
                    }
                    _ => provider = Some(name.clone()),
                }
            }
            policies.push(p);
        }
        // Istio (1.4 on): a workload's `AuthorizationPolicy` documents take
        // precedence over the older RBAC, which is then not enforced for it
        // (still compiled, so a mistake in it is an error either way). Only
        // an enforced ALLOW takes its place: a workload whose policies only
        // deny, audit, delegate (CUSTOM) or dry-run would otherwise lose
        // RBAC's deny-by-default and admit everyone.
        let supersedes = policies.iter().any(|p| p.action == Action::Allow && !p.dry_run);
        let rbac_on = if supersedes {
            let mut ignored = Vec::new();
            let on = rbac::compile(workload, &mut ignored, &settings.trust_domains)?;
            if on || !ignored.is_empty() {
                crate::config_warning!(
                    target: LOG_TARGET,
                    "ALLOW AuthorizationPolicy documents apply to this workload and take precedence over its ServiceRole/ServiceRoleBinding/RbacConfig documents, which are not enforced for it (as in Istio)"
                );
            }
            false
        } else {
            rbac::compile(workload, &mut policies, &settings.trust_domains)?
        };
        let mut engine = Engine::new(policies, rbac_on, settings);
        for (_, ra) in workload.request_authentications() {
            for rule in &ra.jwt_rules {
                engine
                    .split_claims
                    .add(&rule.issuer, &rule.space_delimited_claims);
            }
        }
        Ok(Self(Arc::new(engine)))
    }

    /// Whether it requires nothing of any request: no enforced `ALLOW`
    /// policy, no RBAC, no external authorizer and no `DENY` that reads the
    /// end user (`notRequestPrincipals: ["*"]`), so a request without a
    /// credential is allowed (Istio's `RequestAuthentication` alone).
    pub(crate) fn requires_nothing(&self) -> bool {
        !self.0.has_allow && self.0.custom.is_empty() && !self.0.deny_reads_end_user
    }

    /// The engine settings.
    #[must_use]
    pub fn settings(&self) -> AuthzSettings {
        self.0.settings.clone()
    }

    /// The request headers the rules and external authorizers read (lower case).
    #[must_use]
    pub(crate) fn headers_read(&self) -> &[String] {
        &self.0.headers
    }

    /// Whether any rule reads the request path (then the path is normalised
    /// and the normalised path is what the router sees): a route layer
    /// that cannot know the full path (inside a templated nest) can still
    /// decide a policy that reads none.
    #[must_use]
    pub fn reads_path(&self) -> bool {
        self.0.reads_path
    }

    /// Whether `req` is refused for its host: the policy reads hosts and
    /// the request does not name one plainly
    /// ([`ambiguous_host`](crate::adapter::ambiguous_host)). The one test
    /// of the guard, route policies, [`check`](Self::check) and
    /// [`evaluate`](Self::evaluate).
    #[must_use]
    pub(crate) fn refuses_host(&self, req: &dyn RequestHead) -> bool {
        self.0.reads_host && crate::adapter::ambiguous_host(req)
    }

    /// Per-policy counters since start-up.
    #[must_use]
    pub fn metrics(&self) -> Vec<PolicyMetric> {
        self.0
            .policies
            .iter()
            .map(|p| {
                let mut rules_matched = vec![0; p.written_count()];
                for r in 0..p.rules.len() {
                    rules_matched[p.written_index(r)] += self.0.matched.get(p.first_rule + r);
                }
                PolicyMetric {
                    policy: p.name.to_string(),
                    action: p.action,
                    dry_run: p.dry_run,
                    matched: rules_matched.iter().sum(),
                    rules_matched,
                }
            })
            .collect()
    }

    /// Normalises a request path as rules see it (see the module docs of
    /// `path`): `Ok(None)` when it is already normal.
    ///
    /// # Errors
    /// [`MalformedPath`] for a bad percent-escape, or an escaped slash when
    /// those are refused.
    pub(crate) fn normalize_path<'p>(
        &self,
        path: &'p str,
    ) -> Result<std::borrow::Cow<'p, str>, MalformedPath> {
        path::normalize(path, self.0.settings.escaped_slashes).map_err(|e| MalformedPath(e.detail()))
    }

    /// The path the rules see for a request's `path`: normalised when a
    /// rule reads it ([`normalize_path`](Self::normalize_path)), else as
    /// sent. A path no server hands on (`admin/x`: not `/…`, `*` or empty)
    /// is refused whatever the rules read: a router's fallback (a file
    /// server) may serve it as `/admin/x`.
    ///
    /// # Errors
    /// [`MalformedPath`], as [`normalize_path`](Self::normalize_path)'s.
    #[inline]
    pub(crate) fn path_of<'p>(&self, path: &'p str) -> Result<std::borrow::Cow<'p, str>, MalformedPath> {
        if self.reads_path() {
            self.normalize_path(path)
        } else if path::is_request_path(path) {
            Ok(std::borrow::Cow::Borrowed(path))
        } else {
            Err(MalformedPath(path::PathError::NotAbsolute.detail()))
        }
    }

    /// The path a router is handed for `raw`, a request path that
    /// [`normalize_path`](Self::normalize_path) accepted and changed:
    /// normalised, with raw bytes kept raw (`path::router_form`).
    pub(crate) fn router_path(&self, raw: &str) -> Option<String> {
        path::router_form(raw, self.0.settings.escaped_slashes).ok()
    }

    /// Decides synchronously. A matching `CUSTOM` policy cannot be asked
    /// here and denies (fail closed): use [`AccessPolicy::check`] when the
    /// policy may have one. A malformed path is denied, and so is an
    /// [ambiguous](crate::adapter::ambiguous_host) host where the policy
    /// reads hosts.
    pub fn evaluate(&self, req: &dyn RequestHead, identity: Option<&Identity>) -> AccessDecision {
        let Ok(path) = self.normalize_path(req.path()) else {
            return AccessDecision::no_allow_matched();
        };
        if self.refuses_host(req) {
            return AccessDecision::no_allow_matched();
        }
        match self.check_normalized(req, identity, &path) {
            Check::Ready(d) => d,
            Check::Pending(_) => AccessDecision {
                action: Some(Action::Custom),
                ..AccessDecision::no_allow_matched()
            },
        }
    }

    /// Decides, asking an external authorizer when a `CUSTOM` policy
    /// matches. A malformed path is denied, and so is a request whose host
    /// is [ambiguous](crate::adapter::ambiguous_host) when the policy reads
    /// hosts (a guard answers both with 400 before it asks).
    pub fn check(&self, req: &dyn RequestHead, identity: Option<&Identity>) -> Check<AccessDecision> {
        if self.refuses_host(req) {
            return Check::Ready(AccessDecision::no_allow_matched());
        }
        match self.normalize_path(req.path()) {
            Ok(path) => self.check_normalized(req, identity, &path),
            Err(_) => Check::Ready(AccessDecision::no_allow_matched()),
        }
    }

    /// [`AccessPolicy::check`] for a path already normalised by
    /// [`AccessPolicy::normalize_path`].
    pub(crate) fn check_normalized(
        &self,
        req: &dyn RequestHead,
        identity: Option<&Identity>,
        path: &str,
    ) -> Check<AccessDecision> {
        let engine = &self.0;
        let ctx = Ctx {
            req,
            id: identity,
            path,
            trusted_proxies: engine.settings.trusted_proxies,
            split_claims: &engine.split_claims,
        };
        if engine.reads_remote_addr || engine.reads_local_addr || engine.reads_forwarded {
            // Each read (`palisade explain` notes what was read and not given).
            let remote = engine.reads_remote_addr && req.remote_addr().is_none();
            let local = engine.reads_local_addr && req.local_addr().is_none();
            // `remote.ip` reads the remote address only when
            // X-Forwarded-For has no trusted hop.
            let forwarded = engine.reads_forwarded && ctx.remote_ip().is_none();
            if remote || local || forwarded {
                return Check::Ready(AccessDecision::addresses_unknown());
            }
        }
        if engine.reads_sni && req.connection().is_none() {
            return Check::Ready(AccessDecision::server_name_unknown());
        }
        let custom = if engine.custom.is_empty() {
            None
        } else {
            engine.custom.first(&engine.policies, &ctx)
        };
        let Some(e) = custom else {
            return Check::Ready(engine.decide(&ctx));
        };
        let (policy, rule) = engine.hit(e);
        let Some((_, registered)) = engine.policies[e.0 as usize].provider.clone() else {
            return Check::Ready(AccessDecision::by(false, Action::Custom, (policy, rule)));
        };
        let snapshot = OwnedRequest::snapshot(req, &engine.headers).with_path(path);
        let identity = identity.cloned();
        let this = self.clone();
        Check::pending(async move {
            let verdict = registered
                .ask(CheckRequest {
                    request: snapshot.clone(),
                    identity: identity.clone(),
                })
                .await;
            if verdict != ExternalDecision::Allow {
                tracing::debug!(target: LOG_TARGET, %policy, rule, "external authorizer denied");
                return AccessDecision::by(false, Action::Custom, (policy, rule));
            }
            let ctx = Ctx {
                req: &snapshot,
                id: identity.as_ref(),
                path: snapshot.path(),
                trusted_proxies: this.0.settings.trusted_proxies,
                split_claims: &this.0.split_claims,
            };
            this.0.decide(&ctx)
        })
    }
}

impl From<Requirement> for AccessPolicy {
    /// One ALLOW policy, `code/require`, whose rule is the requirement.
    fn from(r: Requirement) -> Self {
        let rule = CompiledRule::new(
            Vec::new(),
            Vec::new(),
            vec![Clause {
                test: Test::Requirement(r),
                negate: false,
            }],
        );
        let p = CompiledPolicy::new("code/require".into(), Action::Allow, false, vec![rule], None);
        Self(Arc::new(Engine::new(vec![p], false, AuthzSettings::default())))
    }
}

fn settings(w: &WorkloadPolicy<'_>) -> Result<AuthzSettings, PolicyError> {
    let mut out = AuthzSettings::default();
    let mut seen = None;
    for (doc, s) in w.authorization_settings() {
        if let Some(prev) = seen {
            return Err(w.error_at(
                doc,
                "kind",
                format!("only one AuthorizationSettings document may apply to a workload (document {prev} does already)"),
            ));
        }
        seen = Some(doc.index);
        // Checked when the document's set was made.
        if let Some(n) = s.num_trusted_proxies {
            out.trusted_proxies = n;
        }
        out.escaped_slashes = s.escaped_slashes;
        if s.explain_header == Some(true) {
            crate::config_warning!(target: LOG_TARGET, "authorization decisions are explained in an x-palisade-authz response header (explainHeader): a debug switch, not for production");
            out.explain_header = true;
        }
        out.trusted_origins.clone_from(&s.trusted_origins);
        if s.trust_domain.is_some() || !s.trust_domain_aliases.is_empty() {
            let own = s.trust_domain.as_deref().unwrap_or("cluster.local");
            for d in std::iter::once(own).chain(s.trust_domain_aliases.iter().map(String::as_str)) {
                if !out.trust_domains.iter().any(|t| t == d) {
                    out.trust_domains.push(d.to_owned());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
