//! The attribute interface: every value a rule can test, read from the
//! request, its connection and the verified [`Identity`]. A new authenticator
//! fills in an `Identity` (request principal, peer, claims) and needs no
//! change here.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::matcher::{IpBlock, PathMatch, ServiceAccount, StrMatch, host_matches};
use super::require::Requirement;
use crate::identity::Identity;
use crate::request::RequestHead;

/// One request as the engine sees it: the path already normalised.
pub(crate) struct Ctx<'a> {
    pub(crate) req: &'a dyn RequestHead,
    pub(crate) id: Option<&'a Identity>,
    pub(crate) path: &'a str,
    pub(crate) trusted_proxies: usize,
    pub(crate) split_claims: &'a SplitClaims,
}

/// Which top-level claims hold a space-separated list (Envoy's
/// `space_delimited_claims`, as Istio configures it): `scope` and
/// `permission` for every token, and each `jwtRules[].spaceDelimitedClaims`
/// for the tokens of that rule's issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SplitClaims {
    by_issuer: BTreeMap<Box<str>, BTreeSet<Box<str>>>,
}

impl SplitClaims {
    /// Istio's defaults, always split.
    const ALWAYS: [&'static str; 2] = ["scope", "permission"];

    /// Adds the claims a rule for `issuer` lists.
    pub(crate) fn add<'c>(&mut self, issuer: &str, claims: impl IntoIterator<Item = &'c String>) {
        let set = self.by_issuer.entry(issuer.into()).or_default();
        set.extend(claims.into_iter().map(|c| Box::from(c.as_str())));
    }

    /// Whether the top-level `claim` of a token from `issuer` is split on
    /// spaces; a tenant's token (`tenant`) takes its issuer pattern's
    /// claims (`https://login.example/{tenant}/v2.0`, written so in the
    /// rule, its `{tenant}` filled in for the token's issuer).
    fn splits(&self, issuer: Option<&str>, tenant: Option<&str>, claim: &str) -> bool {
        if Self::ALWAYS.contains(&claim) {
            return true;
        }
        let Some(issuer) = issuer else {
            return false;
        };
        if let Some(set) = self.by_issuer.get(issuer) {
            return set.contains(claim);
        }
        tenant.is_some_and(|tenant| {
            self.by_issuer.iter().any(|(pattern, set)| {
                set.contains(claim)
                    && pattern
                        .split_once(crate::syntax::TENANT)
                        .is_some_and(|(before, after)| {
                            issuer.len() == before.len() + tenant.len() + after.len()
                                && issuer.starts_with(before)
                                && issuer.ends_with(after)
                                && &issuer[before.len()..issuer.len() - after.len()] == tenant
                        })
            })
        })
    }
}

impl Ctx<'_> {
    fn source_ip(&self) -> Option<IpAddr> {
        self.req.remote_addr().map(|a| a.ip())
    }

    /// Istio's `remote.ip`: with `n` trusted proxies, the `n`-th address from
    /// the right of `X-Forwarded-For` (Envoy's `xff_num_trusted_hops`); the
    /// connection's address when `n` is 0 or the header is shorter or bad.
    ///
    /// Read from the right, hop by hop, without copying: a header of many
    /// commas costs a scan, not an allocation per hop. Hops are split as
    /// bytes, as Envoy does: a byte that is not UTF-8 makes its own hop bad
    /// (the connection's address, when it is the one taken), never the
    /// hops a proxy appended after it on the same line.
    pub(crate) fn remote_ip(&self) -> Option<IpAddr> {
        const XFF: &str = "x-forwarded-for";
        let n = self.trusted_proxies;
        if n > 0 {
            let mut values = 0;
            while self.req.header_value(XFF, values).is_some() {
                values += 1;
            }
            let mut left = n;
            for i in (0..values).rev() {
                let Some(value) = self.req.header_value(XFF, i) else {
                    continue;
                };
                for hop in value.rsplit(|&b| b == b',') {
                    left -= 1;
                    if left == 0 {
                        return std::str::from_utf8(hop)
                            .ok()
                            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
                            .or_else(|| self.source_ip());
                    }
                }
            }
        }
        self.source_ip()
    }
}

/// A string-valued attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrAttr {
    Method,
    /// `request.auth.principal`: `ISSUER/SUBJECT` or `user@REALM`.
    RequestPrincipal,
    /// `source.principal`: the peer's SPIFFE ID without `spiffe://`.
    PeerPrincipal,
    /// `source.namespace`.
    PeerNamespace,
    Header(Box<str>),
    /// `request.headers[host]`: the `Host` header or, without one (HTTP/2),
    /// the `:authority`, as Envoy's header map keeps both as `:authority`;
    /// compared without case, as `hosts` is.
    Host,
    Audiences,
    Presenter,
    /// `request.auth.tenant` (Palisade's): the tenant of an issuer pattern.
    Tenant,
    Claim(Box<[String]>),
    Sni,
}

/// An address-valued attribute.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IpAttr {
    Source,
    Remote,
    Destination,
}

/// What one clause tests.
#[derive(Clone, Debug)]
pub(crate) enum Test {
    Str(StrAttr, Box<[StrMatch]>),
    Host(Box<[StrMatch]>),
    Path(Box<[PathMatch]>),
    Ip(IpAttr, Box<[IpBlock]>),
    Port(Box<[u16]>),
    /// The peer's Kubernetes service account (`serviceAccounts`).
    ServiceAccount(Box<[ServiceAccount]>),
    /// A role or scope requirement written in code.
    Requirement(Requirement),
    /// Decided when the policy was compiled (`destination.labels[…]`).
    Const(bool),
}

/// A test, possibly negated (`notPaths`, `notValues`).
#[derive(Clone, Debug)]
pub(crate) struct Clause {
    pub(crate) test: Test,
    pub(crate) negate: bool,
}

fn claim_values(value: &Value, split_spaces: bool, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match value {
        Value::String(s) if split_spaces => s.split(' ').filter(|s| !s.is_empty()).any(f),
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().filter_map(Value::as_str).any(f),
        Value::Bool(b) => f(if *b { "true" } else { "false" }),
        Value::Number(n) => f(&n.to_string()),
        _ => false,
    }
}

/// The value of the header `name` as Envoy's RBAC matches it: the values
/// of a repeated header joined by `,` (since CVE-2020-25017), so that a
/// rule on `x-env: prod` cannot be met, or a `notValues` escaped, by
/// adding another `x-env`; one value as it is.
fn header_joined<'r>(req: &'r dyn RequestHead, name: &str) -> Option<Cow<'r, [u8]>> {
    let first = req.header_value(name, 0)?;
    let Some(second) = req.header_value(name, 1) else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = [first, b",", second].concat();
    let mut i = 2;
    while let Some(v) = req.header_value(name, i) {
        joined.push(b',');
        joined.extend_from_slice(v);
        i += 1;
    }
    Some(Cow::Owned(joined))
}

/// Whether the peer is in a namespace `ms` names, as Istio's `namespaces`
/// reads it: each pattern in the regex `.*/ns/NS/.*` over the whole
/// principal, its `*` as `.*`, which may reach past the namespace's
/// segment (`*prod` is in `td/ns/dev/sa/prod/pod/1`, as in Istio). A peer
/// with no principal is matched by the namespace it came with.
fn peer_in_namespace(ctx: &Ctx<'_>, ms: &[StrMatch]) -> bool {
    let Some(peer) = ctx.id.and_then(Identity::peer) else {
        return false;
    };
    match peer.principal.as_deref() {
        Some(principal) if principal.contains("/ns/") => {
            after_ns(principal).any(|rest| ms.iter().any(|m| namespace_regex_matches(m, rest)))
        }
        _ => peer
            .namespace
            .as_deref()
            .is_some_and(|ns| ms.iter().any(|m| m.matches(ns))),
    }
}

/// Whether `rest`, what follows an `/ns/` of a principal, meets `NS/.*` of
/// Istio's regex for the pattern `m`.
fn namespace_regex_matches(m: &StrMatch, rest: &str) -> bool {
    let slashes = || rest.match_indices('/').map(|(i, _)| i);
    match m {
        StrMatch::Exact(e) => rest.strip_prefix(&**e).is_some_and(|r| r.starts_with('/')),
        StrMatch::Prefix(p) => rest.strip_prefix(&**p).is_some_and(|r| r.contains('/')),
        StrMatch::Suffix(s) => slashes().any(|i| rest[..i].ends_with(&**s)),
        StrMatch::Any => rest.contains('/'),
    }
}

/// The namespaces a peer principal is in as Istio's `namespaces` reads
/// it, the regex `.*/ns/NS/.*` over the whole principal: each segment that
/// follows an `ns` segment and is followed by another, so that
/// `cluster.local/ns/prod/sa/x/pod/1` (an ID SPIRE may issue) is in `prod`
/// as `cluster.local/ns/prod/sa/x` is.
fn principal_namespaces(principal: &str) -> impl Iterator<Item = &str> {
    after_ns(principal).filter_map(|rest| rest.find('/').map(|end| &rest[..end]))
}

/// What follows each `/ns/` of a principal, the overlapping ones too
/// (`/ns/ns/prod/` is in `ns` and in `prod`).
fn after_ns(principal: &str) -> impl Iterator<Item = &str> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + principal[from..].find("/ns/")? + "/ns/".len();
        from = start - 1;
        Some(&principal[start..])
    })
}

/// Calls `f` on each value of `attr` until it returns true (a header's
/// one value: its values joined, [`header_joined`]).
pub(crate) fn any_value(attr: &StrAttr, ctx: &Ctx<'_>, f: &mut dyn FnMut(&str) -> bool) -> bool {
    let id = ctx.id;
    match attr {
        StrAttr::Method => f(ctx.req.method()),
        StrAttr::RequestPrincipal => id.and_then(Identity::request_principal_str).is_some_and(f),
        StrAttr::PeerPrincipal => id
            .and_then(Identity::peer)
            .and_then(|p| p.principal.as_deref())
            .is_some_and(f),
        StrAttr::PeerNamespace => id
            .and_then(Identity::peer)
            .is_some_and(|p| match p.principal.as_deref() {
                Some(principal) if principal.contains("/ns/") => principal_namespaces(principal).any(f),
                _ => p.namespace.as_deref().is_some_and(f),
            }),
        StrAttr::Header(name) => {
            header_joined(ctx.req, name).is_some_and(|v| std::str::from_utf8(&v).is_ok_and(&mut *f))
        }
        StrAttr::Audiences => id
            .and_then(Identity::token)
            .is_some_and(|t| t.audiences.iter().any(|a| f(a))),
        StrAttr::Presenter => id
            .and_then(Identity::token)
            .and_then(|t| t.authorized_party.as_deref())
            .is_some_and(f),
        StrAttr::Tenant => id
            .and_then(Identity::token)
            .and_then(|t| t.tenant.as_deref())
            .is_some_and(f),
        StrAttr::Claim(path) => {
            let Some(claims) = id.and_then(Identity::claims) else {
                return false;
            };
            let mut value = claims.get(&path[0]);
            for key in &path[1..] {
                value = value.and_then(|v| v.get(key));
            }
            let tenant = id.and_then(Identity::token).and_then(|t| t.tenant.as_deref());
            let split = path.len() == 1
                && ctx
                    .split_claims
                    .splits(id.and_then(Identity::issuer), tenant, &path[0]);
            value.is_some_and(|v| claim_values(v, split, f))
        }
        StrAttr::Sni => ctx.req.connection().and_then(|c| c.sni.as_deref()).is_some_and(f),
        // Without case: the values were lower-cased when compiled.
        StrAttr::Host => ctx.req.host().is_some_and(|h| {
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                f(&h.to_ascii_lowercase())
            } else {
                f(h)
            }
        }),
    }
}

/// Whether the caller's request principal matches the pattern `m` of
/// `requestPrincipals` (or `request.auth.principal`), as Istio matches it:
/// for a token, the pattern is split at its last `/` into an issuer and a
/// subject part, each matched on its own (Istio's
/// `requestPrincipalGenerator`), so `https://idp/*` means any subject of
/// the issuer `https://idp` (not of `https://idp/tenant`), and `*`
/// needs both a non-empty issuer and subject. A Kerberos caller's
/// principal (`user@REALM`, which has no issuer) is matched whole.
pub(crate) fn request_principal_matches(m: &StrMatch, id: &Identity) -> bool {
    let Some(token) = id.token() else {
        return id
            .request_principal_str()
            .is_some_and(|p| !p.is_empty() && m.matches(p));
    };
    let (iss, sub) = (token.issuer.as_str(), token.subject.as_str());
    let any = |v: &str| !v.is_empty();
    match m {
        StrMatch::Any => any(iss) && any(sub),
        // `*X`: with a `/` in it, `*ISS/SUB` (a suffix of the issuer, or
        // any issuer for `*/SUB`) and exactly SUB; else any issuer and a
        // subject ending in X.
        StrMatch::Suffix(x) => match x.rfind('/') {
            Some(i) => {
                let iss_suffix = &x[..i];
                (if iss_suffix.is_empty() {
                    any(iss)
                } else {
                    iss.ends_with(iss_suffix)
                }) && sub == &x[i + 1..]
            }
            None => any(iss) && sub.ends_with(&**x),
        },
        // `X*`: with a `/` in it, exactly ISS and a subject starting with
        // the rest (any for `ISS/*`); else an issuer starting with X and
        // any subject.
        StrMatch::Prefix(x) => match x.rfind('/') {
            Some(i) => {
                let sub_prefix = &x[i + 1..];
                iss == &x[..i]
                    && (if sub_prefix.is_empty() {
                        any(sub)
                    } else {
                        sub.starts_with(sub_prefix)
                    })
            }
            None => iss.starts_with(&**x) && any(sub),
        },
        StrMatch::Exact(x) => match x.rfind('/') {
            Some(i) => iss == &x[..i] && sub == &x[i + 1..],
            None => iss == &**x && sub.is_empty(),
        },
    }
}

impl Clause {
    #[inline]
    pub(crate) fn holds(&self, ctx: &Ctx<'_>) -> bool {
        let hit = match &self.test {
            Test::Str(StrAttr::RequestPrincipal, ms) => ctx
                .id
                .is_some_and(|id| ms.iter().any(|m| request_principal_matches(m, id))),
            // Header values as bytes: one that is not UTF-8 is still
            // present, and may still end with a suffix (as in Envoy).
            Test::Str(StrAttr::Header(name), ms) => {
                header_joined(ctx.req, name).is_some_and(|v| ms.iter().any(|m| m.matches_bytes(&v)))
            }
            Test::Str(StrAttr::PeerNamespace, ms) => peer_in_namespace(ctx, ms),
            Test::Str(attr, ms) => any_value(attr, ctx, &mut |v| ms.iter().any(|m| m.matches(v))),
            Test::Host(ms) => ctx
                .req
                .host()
                .is_some_and(|h| ms.iter().any(|m| host_matches(m, h))),
            Test::Path(ms) => ms.iter().any(|m| m.matches(ctx.path)),
            Test::Ip(attr, blocks) => {
                let ip = match attr {
                    IpAttr::Source => ctx.source_ip(),
                    IpAttr::Remote => ctx.remote_ip(),
                    IpAttr::Destination => ctx.req.local_addr().map(|a: SocketAddr| a.ip()),
                };
                ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip)))
            }
            Test::Port(ports) => ctx.req.local_addr().is_some_and(|a| ports.contains(&a.port())),
            Test::ServiceAccount(accounts) => ctx
                .id
                .and_then(Identity::peer)
                .and_then(|p| p.principal.as_deref())
                .is_some_and(|p| accounts.iter().any(|a| a.matches_principal(p))),
            Test::Requirement(r) => ctx.id.is_some_and(|id| r.is_met_by(id)),
            Test::Const(b) => *b,
        };
        hit != self.negate
    }

    /// The request header this clause reads, if any.
    pub(crate) fn header(&self) -> Option<&str> {
        match &self.test {
            Test::Str(StrAttr::Header(h), _) => Some(h),
            Test::Ip(IpAttr::Remote, _) => Some("x-forwarded-for"),
            _ => None,
        }
    }

    /// Whether this clause reads the end-user credential (a caller without
    /// one could be admitted by authenticating).
    pub(crate) fn reads_end_user(&self) -> bool {
        matches!(
            self.test,
            Test::Str(
                StrAttr::RequestPrincipal
                    | StrAttr::Audiences
                    | StrAttr::Presenter
                    | StrAttr::Tenant
                    | StrAttr::Claim(_),
                _
            ) | Test::Requirement(_)
        )
    }

    /// Whether this clause reads the path.
    pub(crate) fn reads_path(&self) -> bool {
        matches!(self.test, Test::Path(_))
    }

    /// Whether this clause reads the host (`hosts`, `notHosts`,
    /// `request.headers[host]`).
    pub(crate) fn reads_host(&self) -> bool {
        matches!(&self.test, Test::Host(_) | Test::Str(StrAttr::Host, _))
    }

    /// Whether this clause reads the TLS server name the client asked for
    /// (`connection.sni`).
    pub(crate) fn reads_sni(&self) -> bool {
        matches!(&self.test, Test::Str(StrAttr::Sni, _))
    }

    /// Whether this clause reads the connection's remote address
    /// (`source.ip`, `ipBlocks`).
    pub(crate) fn reads_remote_addr(&self) -> bool {
        matches!(self.test, Test::Ip(IpAttr::Source, _))
    }

    /// Whether this clause reads `remote.ip` (`remoteIpBlocks`): the
    /// trusted `X-Forwarded-For` hop, or the remote address without one.
    pub(crate) fn reads_remote_ip(&self) -> bool {
        matches!(self.test, Test::Ip(IpAttr::Remote, _))
    }

    /// Whether this clause reads the connection's local address
    /// (`destination.ip`, `destination.port`, `ports`).
    pub(crate) fn reads_local_addr(&self) -> bool {
        matches!(self.test, Test::Ip(IpAttr::Destination, _) | Test::Port(_))
    }
}
