//! A framework-neutral view of an HTTP request head.
//!
//! The adapters implement [`RequestHead`] for their framework's request type
//! (`http` 1 for axum, hyper and tonic; `http` 0.2 through actix-web), so every
//! decision is written once against this trait.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::Identity;

/// Facts about the connection a request arrived on, filled in by the server
/// (never from a header).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The remote socket address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The local socket address.
    pub local_addr: Option<std::net::SocketAddr>,
    /// Whether the connection is TLS (the origin's scheme is `https`).
    pub tls: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
    /// The verified mTLS peer, parsed once per connection. The guard merges
    /// it into the request's identity.
    pub peer: Option<Identity>,
    /// The DER certificate chain the peer presented, leaf first.
    pub peer_certificates: Arc<[Vec<u8>]>,
    /// Asked at every request: whether the connection would still be
    /// accepted as it was made. With a [`peer`](Self::peer), whether its
    /// certificate would: the handshake verified it once, and a connection
    /// lives on through a reload of the trust bundle or CRLs (a
    /// revocation) and past the certificate's expiry. Without one, whether
    /// the mutual TLS mode in force still takes a connection without a
    /// certificate (palisade-mtls's `ServerTls::set_mode`: a switch to
    /// STRICT). A request on a connection no longer accepted is refused
    /// (`403`) and the connection closed. Palisade's TLS servers set it;
    /// `None` trusts the handshake's verdict for the connection's life.
    pub peer_recheck: Option<Arc<dyn PeerRecheck>>,
}

/// Whether a connection's verified peer is still trusted
/// ([`ConnectionInfo::peer_recheck`]): its certificate checked again
/// against the trust material in use now, and the clock. Called on every
/// request of the connection, so the answer for unchanged material and a
/// certificate not yet expired is expected to be cheap (a comparison).
pub trait PeerRecheck: Send + Sync + std::fmt::Debug {
    /// `false` when the certificate the peer presented at the handshake is
    /// refused now, as far as the implementation checks (palisade-mtls's:
    /// revoked by a CRL loaded since, expired, its issuer no longer in the
    /// trust bundle, or the server's CRLs past their `nextUpdate`).
    fn still_trusted(&self) -> bool;
}

/// Read access to the parts of a request that authentication and
/// authorization look at.
pub trait RequestHead {
    /// The method, upper case as sent (`GET`).
    fn method(&self) -> &str;
    /// The path, without the query, as sent.
    fn path(&self) -> &str;
    /// The raw query string, without `?`.
    fn query(&self) -> Option<&str>;
    /// The `Host` header or the URI authority.
    fn host(&self) -> Option<&str>;
    /// The request target's authority, where the target has one (HTTP/1's
    /// absolute form `GET http://shop.example/ HTTP/1.1`, HTTP/2's
    /// `:authority`), as sent. When it names another host than the `Host`
    /// header, a guard whose policy reads hosts refuses the request (see
    /// [`adapter::request_host`](crate::adapter::request_host)). `None`
    /// by default: an adapter whose requests never carry one need not
    /// implement it.
    fn authority(&self) -> Option<&str> {
        None
    }
    /// The `index`-th value (from 0) of the header `name` (lower case).
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]>;

    /// The connection facts, when the server provided them.
    fn connection(&self) -> Option<&ConnectionInfo> {
        None
    }

    /// Calls `f` with every value of the header `name` (lower case), in
    /// order; the values are borrowed from the request, so a caller may keep
    /// the one it looks for.
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        let mut i = 0;
        while let Some(v) = self.header_value(name, i) {
            f(v);
            i += 1;
        }
    }

    /// The first value of the header `name` (lower case), when it is valid UTF-8.
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header_value(name, 0)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The address of the connection's peer (Istio's `source.ip`).
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.connection().and_then(|c| c.remote_addr)
    }

    /// The local address the connection arrived on (`destination.ip`,
    /// `destination.port`).
    fn local_addr(&self) -> Option<SocketAddr> {
        self.connection().and_then(|c| c.local_addr)
    }
}

/// A request head owned in memory: for tests, benches and non-HTTP callers.
///
/// ```
/// use palisade_core::authn::{OwnedRequest, RequestHead};
/// let req = OwnedRequest::get("/list").header("authorization", "Bearer abc");
/// assert_eq!(req.header_str("authorization"), Some("Bearer abc"));
/// ```
///
/// Its `Debug` output shows the query's parameter names and the headers'
/// names, not their values: they can carry credentials (a bearer token, a
/// session cookie, `?access_token=`).
#[derive(Clone, Default)]
pub struct OwnedRequest {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    connection: Option<ConnectionInfo>,
}

/// A query as `Debug` output shows it: the parameters' names, never their
/// values (`?access_token=`, `?code=`); an item without `=`, which may be
/// a value alone, as `***`.
pub(crate) fn query_names(query: &str) -> Vec<&str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or("***", |(n, _)| n))
        .collect()
}

impl std::fmt::Debug for OwnedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_deref().map(query_names))
            .field("host", &self.host)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("connection", &self.connection)
            .finish()
    }
}

impl OwnedRequest {
    /// A request with this method and target (`/path?query`).
    #[must_use]
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Self {
            method: method.to_owned(),
            path,
            query,
            ..Self::default()
        }
    }

    /// A `GET` request.
    #[must_use]
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// Adds a header (the name is lower-cased). The first `Host` is the
    /// request's host; a second makes it [ambiguous](crate::adapter::ambiguous_host),
    /// as two sent to a server do.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        let name = name.to_ascii_lowercase();
        let value = value.into();
        if name == "host" && self.header_value("host", 0).is_none() {
            self.host = String::from_utf8(value.clone()).ok();
        }
        self.headers.push((name, value));
        self
    }

    /// Copies what an asynchronous check needs out of a borrowed request:
    /// method, target, host, connection and the named headers.
    #[must_use]
    pub(crate) fn snapshot<S: AsRef<str>>(req: &dyn RequestHead, headers: &[S]) -> Self {
        let mut connection = req.connection().cloned();
        if connection.is_none() && (req.remote_addr().is_some() || req.local_addr().is_some()) {
            connection = Some(ConnectionInfo {
                remote_addr: req.remote_addr(),
                local_addr: req.local_addr(),
                ..ConnectionInfo::default()
            });
        }
        let mut out = Self {
            method: req.method().to_owned(),
            path: req.path().to_owned(),
            query: req.query().map(str::to_owned),
            host: req.host().map(str::to_owned),
            headers: Vec::new(),
            connection,
        };
        for name in headers {
            let name = name.as_ref();
            req.for_each_header(name, &mut |v| out.headers.push((name.to_owned(), v.to_vec())));
        }
        out
    }

    /// Replaces the path (the query stays).
    #[must_use]
    pub(crate) fn with_path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.path);
        self
    }

    /// Sets the connection facts.
    #[must_use]
    pub fn connection(mut self, info: ConnectionInfo) -> Self {
        self.connection = Some(info);
        self
    }
}

impl RequestHead for OwnedRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn for_each_header<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        for (n, v) in &self.headers {
            if n == name {
                f(v);
            }
        }
    }
    fn connection(&self) -> Option<&ConnectionInfo> {
        self.connection.as_ref()
    }
    fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
    fn header_value(&self, name: &str, index: usize) -> Option<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .nth(index)
            .map(|(_, v)| v.as_slice())
    }
}

/// Whether a browser says another origin started this request, as Go's
/// `net/http.CrossOriginProtection` reads it: its `Sec-Fetch-Site` is
/// anything but `same-origin` and `none` (`cross-site`, `same-site`: a
/// sibling subdomain is another origin);
/// without that header (browsers before Fetch Metadata, such as Safari
/// before 16.4), an `Origin` whose host is not the request's `Host`
/// (`null` included), or, without `Origin` either (such a browser's
/// top-level GET), a `Referer` whose origin is not this one, as Django's
/// CSRF check reads it. `none` (a typed address, a bookmark) and
/// `same-origin` are this origin's own, and so is a request with none of
/// the three (not a browser's, or a browser's own navigation). The scheme is
/// not compared: behind a proxy that ends TLS the request arrives over
/// plain HTTP from an `https` origin. With `own_origin` given (a service's
/// external origin, `https://shop.example`), `Origin` must be that one
/// (`https://shop.example:443` is the same origin).
///
/// ```
/// use palisade_core::authn::{OwnedRequest, started_elsewhere};
/// let post = |h: &str, v: &str| OwnedRequest::new("POST", "/orders").header("host", "shop.example").header(h, v);
/// assert!(started_elsewhere(&post("sec-fetch-site", "same-site"), None));
/// assert!(!started_elsewhere(&post("sec-fetch-site", "same-origin"), None));
/// assert!(started_elsewhere(&post("origin", "https://evil.example"), None));
/// assert!(!started_elsewhere(&post("origin", "https://shop.example"), None));
/// assert!(!started_elsewhere(&OwnedRequest::new("POST", "/orders"), None));
/// let get = |referer: &str| OwnedRequest::new("GET", "/logout").header("host", "shop.example").header("referer", referer);
/// assert!(started_elsewhere(&get("https://evil.example/page?x=1"), None));
/// assert!(!started_elsewhere(&get("https://shop.example/cart"), None));
/// assert!(started_elsewhere(&get("android-app://com.example/"), None));
/// let mine = Some("https://shop.example:443");
/// assert!(!started_elsewhere(&post("origin", "https://shop.example"), mine));
/// assert!(started_elsewhere(&post("origin", "https://shop.example:8443"), mine));
/// ```
#[must_use]
pub fn started_elsewhere(req: &dyn RequestHead, own_origin: Option<&str>) -> bool {
    match req.header_str("sec-fetch-site") {
        // Empty: as though it were not sent (Go reads it so).
        None | Some("") => {}
        Some(site) => {
            return !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"));
        }
    }
    // A `Referer` that is not an absolute URL is no browser's: none.
    let Some(from) = req
        .header_str("origin")
        .or_else(|| req.header_str("referer").and_then(crate::syntax::url_origin))
    else {
        return false;
    };
    if let Some(own) = own_origin {
        return crate::syntax::origin_key(from) != crate::syntax::origin_key(own);
    }
    let from_host = from
        .strip_prefix("https://")
        .or_else(|| from.strip_prefix("http://"));
    match (from_host, req.host()) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

/// Whether the request's `Origin` is one of `origins`, written as
/// [`origin_key`](crate::syntax::origin_key) writes them (a default port
/// left out, as browsers leave it): a page of a site the service trusts
/// with its users' cookies.
///
/// ```
/// use palisade_core::authn::{OwnedRequest, origin_among};
/// let trusted = ["https://app.shop.example".to_owned()];
/// let post = |o: &str| OwnedRequest::new("POST", "/orders").header("origin", o);
/// assert!(origin_among(&post("https://APP.shop.example:443"), &trusted));
/// assert!(!origin_among(&post("https://blog.shop.example"), &trusted));
/// assert!(!origin_among(&OwnedRequest::new("POST", "/orders"), &trusted));
/// ```
#[must_use]
pub fn origin_among(req: &dyn RequestHead, origins: &[String]) -> bool {
    !origins.is_empty()
        && req
            .header_str("origin")
            .is_some_and(|o| origins.contains(&crate::syntax::origin_key(o)))
}

#[cfg(test)]
mod tests {
    use super::OwnedRequest;
    use super::RequestHead as _;

    #[test]
    fn a_second_host_header_makes_the_host_ambiguous_as_on_a_server() {
        let one = OwnedRequest::get("/").header("Host", "a.example");
        assert_eq!(one.host(), Some("a.example"));
        assert!(!crate::adapter::ambiguous_host(&one));
        let two = one.header("host", "b.example");
        assert_eq!(two.host(), Some("a.example"), "the first");
        assert!(crate::adapter::ambiguous_host(&two));
        let not_text = OwnedRequest::get("/").header("host", b"a\xff".to_vec());
        assert!(crate::adapter::ambiguous_host(&not_text));
    }

    #[test]
    fn a_request_shows_names_not_values() {
        let req = OwnedRequest::get("/list?page=2&access_token=s3cret-q&s3cret-alone")
            .header("Authorization", "Bearer s3cret-token")
            .header("cookie", "palisade_session=s3cret-cookie")
            .header("host", "shop.example");
        let shown = format!("{req:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        for part in [
            r#""/list""#,
            r#"["page", "access_token", "***"]"#,
            r#"["authorization", "cookie", "host"]"#,
            "shop.example",
        ] {
            assert!(shown.contains(part), "{part} in {shown}");
        }
        // Nor does a decision to rewrite it (its target carries the query).
        let set = crate::policy::PolicySet::from_yaml_str(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules: [{to: [{operation: {paths: ['*']}}]}]\n",
            "p.yaml",
        )
        .unwrap();
        let access = crate::authz::AccessPolicy::compile(
            &set.for_workload(&crate::policy::Workload::new("details", "default")),
        )
        .unwrap();
        let guard = crate::Guard::builder().access_policy(access).build().unwrap();
        let crate::Check::Ready(decision) =
            guard.check(&OwnedRequest::get("//list?access_token=s3cret-q&s3cret"))
        else {
            panic!("decided at once")
        };
        let shown = format!("{decision:?}");
        assert!(shown.contains(r#"Some("/list?access_token&***")"#), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
