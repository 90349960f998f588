//! The value matchers of Istio's grammar: strings (exact, `prefix*`,
//! `*suffix`, `*`), paths (those plus `{*}` / `{**}` templates), IP blocks,
//! ports and service accounts. Each is parsed once, at start-up, and refuses
//! what Istio refuses.

use std::net::IpAddr;

/// Istio's string match: exact, `prefix*`, `*suffix` or `*` (presence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl StrMatch {
    /// Parses a pattern; a `*` anywhere but at one end is refused (Istio
    /// would treat it literally or reject it: either way not what was meant).
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(StrMatch::Any);
        }
        if pattern.is_empty() {
            return Err("an empty string matches nothing; use \"*\" for any value".into());
        }
        let (m, rest) = if let Some(p) = pattern.strip_suffix('*') {
            (StrMatch::Prefix(p.into()), p)
        } else if let Some(s) = pattern.strip_prefix('*') {
            (StrMatch::Suffix(s.into()), s)
        } else {
            (StrMatch::Exact(pattern.into()), pattern)
        };
        if rest.contains('*') {
            return Err(format!(
                "`{pattern}`: `*` may only stand alone, at the start (suffix match) or at the end (prefix match)"
            ));
        }
        Ok(m)
    }

    /// Whether `value` matches; `*` wants a value that is not empty, as
    /// Istio's `*` becomes the regex `.+` (a claim `""` meets no `*`).
    #[inline]
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Any => !value.is_empty(),
            StrMatch::Exact(e) => value == &**e,
            StrMatch::Prefix(p) => value.starts_with(&**p),
            StrMatch::Suffix(s) => value.ends_with(&**s),
        }
    }

    /// [`matches`](Self::matches) on raw bytes, for a header's value (one
    /// that is not UTF-8 too: Envoy's header matchers compare bytes), but
    /// that `*` means present, an empty value too, as Envoy's presence
    /// match.
    pub(crate) fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => value == e.as_bytes(),
            StrMatch::Prefix(p) => value.starts_with(p.as_bytes()),
            StrMatch::Suffix(s) => value.ends_with(s.as_bytes()),
        }
    }

    /// ASCII case-insensitive match (host names).
    pub(crate) fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            StrMatch::Prefix(p) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            StrMatch::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }

    /// The literal text every matching value starts with.
    fn literal_prefix(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(e) => Some(e),
            StrMatch::Prefix(p) => Some(p),
            StrMatch::Any | StrMatch::Suffix(_) => None,
        }
    }
}

/// Matches a `Host` value as Istio does: case-insensitive, the port part of
/// the value included, so `details.example` does not match
/// `details.example:9080` (write `details.example:*` for any port).
pub(crate) fn host_matches(m: &StrMatch, host: &str) -> bool {
    m.matches_ignore_case(host)
}

/// Whether an exact host pattern has no port (it then misses requests whose
/// `Host` carries one, which a DENY rule should not).
pub(crate) fn host_without_port(m: &StrMatch) -> Option<&str> {
    match m {
        StrMatch::Exact(h)
            if !h
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Some(h)
        }
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    /// `{*}`: exactly one non-empty path segment.
    One,
    /// `{**}`: the rest of the path, any number of characters, `/` included.
    Rest,
}

/// A path pattern: a string match, or an Envoy URI template with `{*}` and
/// `{**}` (which must be whole segments, `{**}` last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(Box<[Segment]>),
}

impl PathMatch {
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.contains('{') && !pattern.contains('}') {
            return StrMatch::parse(pattern).map(PathMatch::Str);
        }
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("`{pattern}`: a path template starts with `/`"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(format!("`{pattern}`: `{{**}}` must be the last segment")),
                p if p.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "`{pattern}`: `{{*}}` and `{{**}}` must be whole path segments, and `*` cannot be mixed with them"
                    ));
                }
                p => Segment::Literal(p.into()),
            };
            segments.push(seg);
        }
        Ok(PathMatch::Template(segments.into()))
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(segs) => {
                let Some(mut rest) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, seg) in segs.iter().enumerate() {
                    let last = i + 1 == segs.len();
                    // A `*` is taken as any character: Envoy's segments
                    // exclude a raw `*`, but the path here is normalised,
                    // `%2A` decoded, and excluding it would let
                    // `/admin/x%2A` past a DENY on `/admin/{*}`.
                    match seg {
                        Segment::Rest => return true,
                        Segment::One | Segment::Literal(_) => {
                            let (head, tail) = match rest.split_once('/') {
                                Some((h, t)) => (h, Some(t)),
                                None => (rest, None),
                            };
                            let ok = match seg {
                                Segment::Literal(l) => head == &**l,
                                _ => !head.is_empty(),
                            };
                            if !ok {
                                return false;
                            }
                            match (tail, last) {
                                (None, true) => return true,
                                (None, false) => {
                                    // `/a/{**}` also matches `/a/` but not `/a`.
                                    return false;
                                }
                                (Some(t), false) => rest = t,
                                (Some(_), true) => return false,
                            }
                        }
                    }
                }
                false
            }
        }
    }

    /// The longest literal text every matching path starts with, cut after
    /// its last `/`: the key this pattern is indexed under. `None`: any path.
    pub(crate) fn index_key(&self) -> Option<&str> {
        let lit = match self {
            PathMatch::Str(m) => m.literal_prefix()?,
            PathMatch::Template(segs) => {
                // Templates are indexed by their root: rare enough.
                let _ = segs;
                "/"
            }
        };
        let cut = lit.rfind('/')?;
        Some(&lit[..=cut])
    }
}

/// An IP address block (`10.0.0.0/8`, `::1`, `192.168.1.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not an IP address or CIDR block such as 10.0.0.0/8");
        let (a, p) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        // An IPv4-mapped block (`::ffff:203.0.113.0/120`) is its IPv4 block:
        // requests' mapped addresses are read as IPv4, so as written it
        // would never match.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Self {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Self { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Istio's limits on a list of service accounts and on one of them.
const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

/// A Kubernetes service account of the peer (`serviceAccounts`,
/// `source.serviceAccount`): `NAMESPACE/NAME`, or `NAME` in the policy's
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceAccount {
    /// `/ns/NAMESPACE/`.
    ns: Box<str>,
    /// `sa/NAME`.
    sa: Box<str>,
}

impl ServiceAccount {
    /// Parses a value as Istio validates it: no wildcard, at most one `/`,
    /// neither part empty, at most 320 characters.
    pub(crate) fn parse(value: &str, default_namespace: &str) -> Result<Self, String> {
        let form = "write NAMESPACE/SERVICE_ACCOUNT, or SERVICE_ACCOUNT for one in the policy's namespace";
        if value.is_empty() {
            return Err(format!("an empty service account matches nothing: {form}"));
        }
        if value.contains('*') {
            return Err(format!(
                "`{value}`: no wildcard is allowed in a service account (as in Istio)"
            ));
        }
        if value.len() > MAX_SERVICE_ACCOUNT_LEN {
            return Err(format!(
                "`{value}` is longer than {MAX_SERVICE_ACCOUNT_LEN} characters (as in Istio)"
            ));
        }
        let (ns, sa) = value.split_once('/').unwrap_or((default_namespace, value));
        if ns.is_empty() || sa.is_empty() || sa.contains('/') {
            return Err(format!("`{value}`: {form}"));
        }
        Ok(Self {
            ns: format!("/ns/{ns}/").into(),
            sa: format!("sa/{sa}").into(),
        })
    }

    /// Parses a list (at most 16, as in Istio); errors name `field[i]`.
    pub(crate) fn parse_all(
        values: &[String],
        default_namespace: &str,
        field: &str,
    ) -> Result<Box<[Self]>, (String, String)> {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            return Err((
                field.to_owned(),
                format!("at most {MAX_SERVICE_ACCOUNTS} service accounts (as in Istio)"),
            ));
        }
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Self::parse(v, default_namespace).map_err(|m| (format!("{field}[{i}]"), m)))
            .collect()
    }

    /// Whether a peer principal (the SPIFFE ID without `spiffe://`) is this
    /// service account. The same language as Istio's matcher
    /// `spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?` (the whole ID, names taken
    /// literally): a trust domain, `/ns/NS/`, optionally more segments, then
    /// `sa/SA`, optionally followed by more segments.
    pub(crate) fn matches_principal(&self, principal: &str) -> bool {
        positions(principal, &self.ns).any(|i| {
            // `.+` before `/ns/`: a non-empty trust domain.
            if i == 0 {
                return false;
            }
            let rest = &principal[i + self.ns.len()..];
            positions(rest, &self.sa).any(|j| {
                // `(.+/|)` before `sa/`: nothing, or something ending in `/`.
                let before = j == 0 || (j >= 2 && rest.as_bytes()[j - 1] == b'/');
                // `(/.+)?` after the name: nothing, or `/` and something.
                let after = &rest[j + self.sa.len()..];
                before && (after.is_empty() || (after.len() >= 2 && after.starts_with('/')))
            })
        })
    }
}

/// Every (possibly overlapping) position of `needle` in `hay`; `needle`
/// starts with an ASCII byte, so each next start is a char boundary.
fn positions<'h>(hay: &'h str, needle: &'h str) -> impl Iterator<Item = usize> + 'h {
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + hay.get(from..)?.find(needle)?;
        from = at + 1;
        Some(at)
    })
}

/// Parses a port written as a string (`"8080"`).
pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    text.trim()
        .parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port number (0-65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_are_exact_prefix_suffix_or_presence() {
        let m = |p: &str, v: &str| StrMatch::parse(p).unwrap().matches(v);
        assert!(m("/a", "/a") && !m("/a", "/ab"));
        assert!(m("/a*", "/ab") && !m("/a*", "/b"));
        assert!(m("*.html", "/x.html") && !m("*.html", "/x.htm"));
        assert!(m("*", "x") && !m("*", ""), "`*` is Istio's `.+`");
        assert!(
            StrMatch::parse("*").unwrap().matches_bytes(b""),
            "a header's `*` means present, as Envoy's presence match"
        );
        assert!(StrMatch::parse("/a*b").is_err());
        assert!(StrMatch::parse("*a*").is_err());
        assert!(StrMatch::parse("").is_err());
    }

    #[test]
    fn hosts_ignore_case_and_include_the_port() {
        let m = StrMatch::parse("details.example").unwrap();
        assert!(host_matches(&m, "Details.Example"));
        assert!(!host_matches(&m, "details.example:9080"));
        assert!(host_matches(
            &StrMatch::parse("details.example:*").unwrap(),
            "details.example:9080"
        ));
        assert!(!host_matches(&m, "details.example.evil"));
        assert_eq!(host_without_port(&m), Some("details.example"));
        assert_eq!(host_without_port(&StrMatch::parse("a:80").unwrap()), None);
        let with_port = StrMatch::parse("details.example:9080").unwrap();
        assert!(!host_matches(&with_port, "details.example:9081"));
        let suffix = StrMatch::parse("*.example").unwrap();
        assert!(host_matches(&suffix, "a.EXAMPLE"));
    }

    #[test]
    fn templates_match_whole_segments() {
        let t = PathMatch::parse("/foo/{*}/bar").unwrap();
        assert!(t.matches("/foo/x/bar"));
        assert!(!t.matches("/foo//bar"));
        assert!(!t.matches("/foo/x/y/bar"));
        assert!(!t.matches("/foo/x/bar/baz"));
        let r = PathMatch::parse("/foo/{**}").unwrap();
        assert!(r.matches("/foo/a/b/c") && r.matches("/foo/") && !r.matches("/foo") && !r.matches("/food/a"));
        let both = PathMatch::parse("/api/{*}/items/{**}").unwrap();
        assert!(both.matches("/api/v1/items/3/x") && !both.matches("/api/v1/other/3"));
        // A `*` (a normalised `%2A`) is a character like any: a DENY on a
        // template is not passed by writing one.
        assert!(t.matches("/foo/*/bar") && r.matches("/foo/a/*") && both.matches("/api/*/items/3"));
        assert!(PathMatch::parse("/foo/{**}/bar").is_err());
        assert!(PathMatch::parse("/foo{*}").is_err());
        assert!(PathMatch::parse("/foo/{*}*").is_err());
    }

    #[test]
    fn index_keys_cut_at_the_last_slash() {
        let k = |p: &str| PathMatch::parse(p).unwrap().index_key().map(str::to_owned);
        assert_eq!(k("/api/v42/items").as_deref(), Some("/api/v42/"));
        assert_eq!(k("/api/v4*").as_deref(), Some("/api/"));
        assert_eq!(k("/healthz").as_deref(), Some("/"));
        assert_eq!(k("*.html"), None);
        assert_eq!(k("*"), None);
    }

    #[test]
    fn service_accounts_match_istio_spiffe_ids() {
        let sa = |v: &str| ServiceAccount::parse(v, "default").unwrap();
        let ratings = sa("prod/ratings");
        assert!(ratings.matches_principal("cluster.local/ns/prod/sa/ratings"));
        assert!(ratings.matches_principal("example.org/ns/prod/sa/ratings"));
        // Istio's `(.+/|)` and `(/.+)?`: segments between and after.
        assert!(ratings.matches_principal("td/ns/prod/x/sa/ratings"));
        assert!(ratings.matches_principal("td/ns/prod/sa/ratings/v2"));
        assert!(!ratings.matches_principal("td/ns/prod/sa/ratings/"));
        assert!(!ratings.matches_principal("td/ns/prod/sa/ratings-v2"));
        assert!(!ratings.matches_principal("td/ns/prod/sa/rating"));
        assert!(!ratings.matches_principal("td/ns/dev/sa/ratings"));
        assert!(!ratings.matches_principal("td/ns/production/sa/ratings"));
        assert!(!ratings.matches_principal("td/ns/prod/xsa/ratings"));
        assert!(
            !ratings.matches_principal("/ns/prod/sa/ratings"),
            "no trust domain"
        );
        assert!(!ratings.matches_principal("ns/prod/sa/ratings"));
        // Overlapping markers are all tried: `.+` is `/ns` here.
        assert!(sa("ns/x").matches_principal("/ns/ns/ns/sa/x"));
        assert!(sa("a/sa").matches_principal("td/ns/a/sa/sa"));
        // Names are literal, not patterns.
        assert!(!sa("prod/my.sa").matches_principal("td/ns/prod/sa/myxsa"));
        // `NAME` alone is in the policy's namespace.
        assert!(sa("ratings").matches_principal("td/ns/default/sa/ratings"));
        assert!(!sa("ratings").matches_principal("td/ns/prod/sa/ratings"));
        for bad in ["", "*", "prod/*", "a/b/c", "/ratings", "prod/", &"x".repeat(321)] {
            assert!(ServiceAccount::parse(bad, "default").is_err(), "{bad}");
        }
        let seventeen = vec!["a/b".to_owned(); 17];
        assert_eq!(
            ServiceAccount::parse_all(&seventeen, "default", "f")
                .unwrap_err()
                .0,
            "f"
        );
    }

    #[test]
    fn ip_blocks_contain_addresses_of_their_family() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpBlock::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("ten").is_err());
    }

    /// An IPv4-mapped block is its IPv4 block, matching an address however
    /// written (a request's mapped address is read as IPv4); other IPv6
    /// blocks match no IPv4 address.
    #[test]
    fn an_ipv4_mapped_block_is_its_ipv4_block() {
        let b = IpBlock::parse("::ffff:203.0.113.0/120").unwrap();
        assert_eq!(b, IpBlock::parse("203.0.113.0/24").unwrap());
        for ip in ["203.0.113.9", "::ffff:203.0.113.9"] {
            assert!(b.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!b.contains("203.0.114.9".parse().unwrap()));
        assert!(
            IpBlock::parse("::ffff:10.0.0.1")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        assert!(
            !IpBlock::parse("::/0")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
    }
}
