//! Which credential goes to which host.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::endpoint::Granted;
use crate::{CallerToken, ClientCredentials, ClientError, LOG_TARGET, Sent, TokenExchange};

/// What an outbound call to a host carries.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// Nothing.
    #[default]
    None,
    /// The caller's own token, relayed.
    Caller,
    /// The workload's own token.
    ClientCredentials(ClientCredentials),
    /// A token for the upstream on behalf of the caller (RFC 8693).
    TokenExchange(TokenExchange),
    /// A Kerberos ticket for the upstream as the caller (its delegated
    /// ticket, or S4U): `Authorization: Negotiate …`.
    #[cfg(feature = "spnego")]
    Kerberos(crate::Kerberos),
}

impl Credentials {
    /// The `Authorization` header value for a call made while serving a
    /// request whose token is `caller`; `None` when nothing is to be sent.
    /// (`Kerberos` needs the upstream's host unless it names its service:
    /// use [`Credentials::apply`] or [`Upstreams::authorization`]. A value
    /// alone cannot check the upstream's mutual-authentication answer:
    /// [`Credentials::apply`] returns what checks it, [`Sent`].)
    ///
    /// # Errors
    /// [`ClientError::NoCallerToken`] when the caller's token is needed and
    /// there is none; the grant's errors.
    pub async fn authorization(&self, caller: Option<&CallerToken>) -> Result<Option<Arc<str>>, ClientError> {
        self.authorization_to(None, caller).await
    }

    /// [`authorization`](Self::authorization) for a call to `host`.
    pub(crate) async fn authorization_to(
        &self,
        host: Option<&str>,
        caller: Option<&CallerToken>,
    ) -> Result<Option<Arc<str>>, ClientError> {
        let Some((value, _, _)) = self.value(host, caller, None).await? else {
            return Ok(None);
        };
        // Every value was made from a string.
        let text = value
            .to_str()
            .map_err(|_| ClientError::Config("the credential is not text".into()))?;
        Ok(Some(text.into()))
    }

    /// Sets `headers`' `Authorization` for a call to `host` (the name the
    /// upstream is known by; Kerberos asks a ticket for `HTTP@host`) to what
    /// this credential sends, marked sensitive, or removes it when nothing
    /// is to be sent: what [`CredentialsLayer`](crate::CredentialsLayer) and
    /// [`Upstreams::apply`] do, for a client that chose the credential
    /// itself. Tell the returned [`Sent`] the upstream's answer, so a
    /// cached token it refuses is renewed in the background (and a
    /// Kerberos upstream's proof checked). Set the request's
    /// `content-type` in `headers` first: for a gRPC call
    /// (`application/grpc`), a trailers-only error answer counts as an
    /// error, which need not prove the upstream.
    ///
    /// # Errors
    /// As [`authorization`](Self::authorization): the request must then
    /// not be sent.
    pub async fn apply(
        &self,
        headers: &mut http::HeaderMap,
        host: Option<&str>,
        caller: Option<&CallerToken>,
    ) -> Result<Sent, ClientError> {
        self.apply_call(headers, host, caller, None).await
    }

    /// Whether calls carry something of the caller's: its token relayed,
    /// a token exchanged for it, a Kerberos ticket as the caller.
    fn of_the_caller(&self) -> bool {
        match self {
            Credentials::Caller | Credentials::TokenExchange(_) => true,
            #[cfg(feature = "spnego")]
            Credentials::Kerberos(_) => true,
            Credentials::None | Credentials::ClientCredentials(_) => false,
        }
    }

    /// [`apply`](Self::apply) to a `reqwest` request for the upstream known
    /// as `host` (the name Kerberos asks a ticket for; `None`: the URL's
    /// host), with the request's method and URL for the `DPoP` proof a
    /// DPoP-bound token needs: what a client that chose the credential
    /// itself calls when the URL's host is not the upstream's name (an
    /// address the name resolves to, say). Tell the returned [`Sent`] the
    /// upstream's answer ([`Sent::answered_by`]).
    ///
    /// # Errors
    /// As [`authorization`](Self::authorization): the request must then
    /// not be sent.
    pub async fn apply_request(
        &self,
        req: &mut reqwest::Request,
        host: Option<&str>,
        caller: Option<&CallerToken>,
    ) -> Result<Sent, ClientError> {
        let host = host
            .map(str::to_owned)
            .or_else(|| req.url().host_str().map(str::to_owned));
        let (method, htu) = call_of(req);
        let sent = self
            .apply_call(req.headers_mut(), host.as_deref(), caller, Some((&method, &htu)))
            .await?;
        Ok(sent.to(req.url()))
    }

    /// [`apply`](Self::apply) for a call of `method` to `htu` (its URI
    /// without query or fragment), which a DPoP-bound token proves in a
    /// `DPoP` header.
    pub(crate) async fn apply_call(
        &self,
        headers: &mut http::HeaderMap,
        host: Option<&str>,
        caller: Option<&CallerToken>,
        call: Option<(&str, &str)>,
    ) -> Result<Sent, ClientError> {
        headers.remove("dpop");
        match self.value(host, caller, call).await? {
            Some((value, proof, sent)) => {
                headers.insert(http::header::AUTHORIZATION, value);
                if let Some(proof) = proof {
                    headers.insert("dpop", proof);
                }
                Ok(sent.of_request(headers))
            }
            None => {
                headers.remove(http::header::AUTHORIZATION);
                Ok(Sent::default())
            }
        }
    }

    /// The `Authorization` value for a call to `host`, marked sensitive
    /// (the grants' cached ones are cloned: a reference count), and the
    /// `DPoP` proof of a DPoP-bound token for `call` (method, `htu`), and
    /// what to tell of the answer; `None` when nothing is to be sent.
    async fn value(
        &self,
        host: Option<&str>,
        caller: Option<&CallerToken>,
        call: Option<(&str, &str)>,
    ) -> Result<Option<(http::HeaderValue, Option<http::HeaderValue>, Sent)>, ClientError> {
        let _ = host; // read by Kerberos only
        let made = |text: String, what: &str, sent: Sent| {
            let mut value = http::HeaderValue::try_from(text)
                .map_err(|_| ClientError::Config(format!("{what} cannot be sent in a header")))?;
            value.set_sensitive(true);
            Ok::<_, ClientError>(Some((value, None, sent)))
        };
        // A granted token, with its proof when it is DPoP-bound.
        let granted = |g: &Granted, sent: Sent| {
            match (&g.dpop, call) {
            (None, _) => Ok(Some((g.value.clone(), None, sent))),
            (Some(_), Some((method, htu))) => {
                let sent = match g.nonces() {
                    Some(nonces) => sent.proved(nonces, htu),
                    None => sent,
                };
                Ok(Some((g.value.clone(), g.proof(method, htu), sent)))
            }
            (Some(_), None) => Err(ClientError::Config(
                "a DPoP-bound token is sent with a proof of the call: use Credentials::apply_request, Upstreams::apply or CredentialsLayer, which know the call's method and URI".into(),
            )),
        }
        };
        match self {
            Credentials::None => Ok(None),
            Credentials::Caller => made(
                format!("Bearer {}", bearer(caller)?),
                "the caller's token",
                Sent::default(),
            ),
            Credentials::ClientCredentials(c) => {
                let g = c.granted().await?;
                granted(&g, Sent::own(c, &g.value))
            }
            Credentials::TokenExchange(x) => {
                let token = caller.ok_or(ClientError::NoCallerToken)?;
                let key = token.shared().ok_or(ClientError::NoCallerToken)?;
                let g = x.granted(token).await?;
                granted(&g, Sent::exchanged(x, key, &g.value))
            }
            #[cfg(feature = "spnego")]
            Credentials::Kerberos(k) => {
                let negotiation = k
                    .authorization(host, caller.and_then(CallerToken::kerberos))
                    .await?;
                made(
                    negotiation.header().to_owned(),
                    "the Kerberos ticket",
                    Sent::negotiated(negotiation, k.mutual()),
                )
            }
        }
    }
}

/// A request's method and its URL without query, fragment or user-info (a
/// DPoP proof's `htm` and `htu`: a password in the URL, never sent on the
/// wire, is not sent in the proof either).
fn call_of(req: &reqwest::Request) -> (String, String) {
    let mut htu = req.url().clone();
    htu.set_query(None);
    htu.set_fragment(None);
    let _ = htu.set_username("");
    let _ = htu.set_password(None);
    (req.method().as_str().to_owned(), htu.into())
}

/// The caller's bearer token, or why there is none.
fn bearer(caller: Option<&CallerToken>) -> Result<&str, ClientError> {
    if caller.is_some_and(CallerToken::is_bound) {
        return Err(ClientError::CallerTokenBound);
    }
    caller
        .and_then(CallerToken::bearer)
        .ok_or(ClientError::NoCallerToken)
}

/// A host as entries and lookups compare it: lower case, an IPv6
/// literal without brackets, no trailing dot.
pub(crate) fn normalize(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // An IP literal in its one standard form (`0:0::1` is `::1`), as
    // reqwest's URLs write it and `http::Uri` does not.
    // An IPv4 address written as IPv6 (`::ffff:203.0.113.7`) is that
    // address: a socket to it reaches the IPv4 host.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.to_canonical().to_string();
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // A last label of digits (or `0x…`) is an IPv4 address to a URL
    // parser, in any of its forms (`010.0.0.1`, `0x7f.1`, `127.1`): the
    // address reqwest connects to, dotted decimal.
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")));
    if numeric
        && let Ok(url) = reqwest::Url::parse(&format!("http://{host}/"))
        && let Some(ip) = url.host_str().and_then(|h| h.parse::<std::net::Ipv4Addr>().ok())
    {
        return ip.to_string();
    }
    host.to_ascii_lowercase()
}

/// Credentials by host: what the workload sends to each host it calls. A
/// host no entry names gets the `*` entry, else nothing.
///
/// A `*` entry whose Kerberos credential names its service is refused for
/// hosts without an entry of their own, by [`for_host`](Self::for_host)
/// and so at each call (every such host would get a ticket for that
/// service, made as the caller). Two settings are allowed and said out
/// loud (a `warn` line of `palisade::client`): a `*` entry that sends
/// something of the caller's (every host not named gets it: name the hosts
/// instead), when built; and a credential sent over plain `http` to a host
/// that is not loopback (it can be read in transit), once per host, at its
/// first call.
#[derive(Clone, Debug, Default)]
pub struct Upstreams(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    hosts: HashMap<String, Credentials>,
    /// The hosts already warned of for plain `http`.
    warned: Mutex<HashSet<String>>,
}

/// The most hosts remembered as warned of; past it, no more warnings.
const WARNED_MAX: usize = 256;

/// Builds [`Upstreams`].
#[derive(Debug, Default)]
#[must_use]
pub struct UpstreamsBuilder(HashMap<String, Credentials>);

impl UpstreamsBuilder {
    /// What calls to `host` carry (a host name as the request's authority
    /// names it, without the port; `*` for every other host). A later entry
    /// for the same host replaces an earlier one.
    pub fn host(mut self, host: impl Into<String>, credentials: Credentials) -> Self {
        self.0.insert(normalize(&host.into()), credentials);
        self
    }

    /// Builds it.
    pub fn build(self) -> Upstreams {
        let upstreams = Upstreams(Arc::new(Inner {
            hosts: self.0,
            warned: Mutex::default(),
        }));
        if let Some(warning) = upstreams.star_warning() {
            palisade_core::config_warning!(target: LOG_TARGET, "{warning}");
        }
        upstreams
    }
}

impl Upstreams {
    /// Starts an empty map.
    pub fn builder() -> UpstreamsBuilder {
        UpstreamsBuilder::default()
    }

    /// The credentials of calls to `host` (compared without case, an IPv6
    /// literal with or without brackets, a trailing dot or not; no port):
    /// its entry's, else the `*` entry's, else [`Credentials::None`].
    ///
    /// # Errors
    /// [`ClientError::Config`] for the one choice that would hand a
    /// credential to a host it is not for: the `*` entry's Kerberos
    /// credential that names its service
    /// ([`Kerberos::service`](crate::Kerberos::service)), for a host with no
    /// entry of its own. Every such host would get a ticket for that one
    /// service, made as the caller, which it could present there as the
    /// caller.
    pub fn for_host(&self, host: &str) -> Result<&Credentials, ClientError> {
        let key = normalize(host);
        let Some(credentials) = self.0.hosts.get(&key) else {
            return self.star(&key);
        };
        Ok(credentials)
    }

    /// The `*` entry's credentials for `host` (normalized), which has no
    /// entry of its own.
    fn star(&self, host: &str) -> Result<&Credentials, ClientError> {
        let credentials = self.0.hosts.get("*").unwrap_or(&Credentials::None);
        #[cfg(feature = "spnego")]
        if let Credentials::Kerberos(k) = credentials
            && let Some(service) = k.named_service()
        {
            return Err(ClientError::Config(format!(
                "the `*` upstream entry's Kerberos credential names its service ({service}): a ticket for it goes only to hosts named for it, and `{host}` is not"
            )));
        }
        #[cfg(not(feature = "spnego"))]
        let _ = host;
        Ok(credentials)
    }

    /// What the `*` entry sends to every host not named, when it sends
    /// anything.
    fn star_warning(&self) -> Option<&'static str> {
        match self.0.hosts.get("*")? {
            Credentials::None => None,
            #[cfg(feature = "spnego")]
            Credentials::Kerberos(k) if k.named_service().is_some() => Some(
                "the `*` upstream entry's Kerberos credential names its service: calls to a host without an entry of its own are refused (that host would get a ticket for the service, as the caller): name the hosts instead",
            ),
            c if c.of_the_caller() => Some(
                "the `*` upstream entry sends a token of the caller's to every host without an entry of its own: name the hosts instead",
            ),
            _ => Some(
                "the `*` upstream entry sends the workload's own token to every host without an entry of its own, outside ones too: name the hosts instead",
            ),
        }
    }

    /// The credentials of a call to `host` by `scheme`, the first call that
    /// sends one over plain `http` to a host that is not loopback warned of.
    pub(crate) fn for_call(&self, scheme: Option<&str>, host: &str) -> Result<&Credentials, ClientError> {
        let credentials = self.for_host(host)?;
        if self.first_in_clear(scheme, host, credentials) {
            tracing::warn!(
                target: LOG_TARGET,
                host = %normalize(host),
                "a credential goes to this host over plain http: it can be read in transit (use https, or palisade-mtls's UpstreamTls)"
            );
        }
        Ok(credentials)
    }

    /// Whether this is the first call (of the first [`WARNED_MAX`] hosts)
    /// to send `credentials` to `host` over plain `http`, not on loopback.
    fn first_in_clear(&self, scheme: Option<&str>, host: &str, credentials: &Credentials) -> bool {
        let clear = scheme.is_some_and(|s| s.eq_ignore_ascii_case("http"))
            && !matches!(credentials, Credentials::None)
            && !palisade_core::syntax::is_loopback_host(host);
        clear && {
            let mut warned = self.0.warned.lock().unwrap_or_else(PoisonError::into_inner);
            warned.len() < WARNED_MAX && warned.insert(normalize(host))
        }
    }

    /// The `Authorization` header value for a call to `uri`.
    ///
    /// # Errors
    /// As [`Credentials::authorization`]; [`ClientError::Config`] for a
    /// URI that names no host (it would get the `*` entry's credential).
    pub async fn authorization(
        &self,
        uri: &http::Uri,
        caller: Option<&CallerToken>,
    ) -> Result<Option<Arc<str>>, ClientError> {
        let Some(host) = uri.host() else {
            return Err(ClientError::Config(
                "the upstream URI names no host: no credential is chosen for it".into(),
            ));
        };
        self.for_host(host)?.authorization_to(Some(host), caller).await
    }

    /// Sets the `Authorization` header of a `reqwest` request for its
    /// host (replacing any), or removes it when the host gets nothing.
    /// Send it with a client that follows no redirects
    /// (`redirect::Policy::none()`): reqwest keeps the header on a
    /// redirect to the same host and port by another scheme, so an
    /// `https` upstream answering `302 http://…` would have the token sent
    /// in clear, and a credential chosen for one host is never re-chosen
    /// for the next. Tell the returned [`Sent`] the upstream's answer
    /// ([`Sent::answered_by`]), so a cached token it refuses is not sent
    /// again.
    ///
    /// # Errors
    /// As [`Credentials::authorization`]: the request must then not be
    /// sent.
    pub async fn apply(
        &self,
        req: &mut reqwest::Request,
        caller: Option<&CallerToken>,
    ) -> Result<Sent, ClientError> {
        // A URL without a host gets nothing, as `authorization` refuses it.
        let host = req
            .url()
            .host_str()
            .ok_or_else(|| ClientError::Config("the request's URL names no host".into()))?;
        let credentials = self.for_call(Some(req.url().scheme()), host)?;
        credentials.apply_request(req, None, caller).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DPoP proof's `htu` is the URL without query, fragment or user-info
    /// (a password in the URL is never sent, in the proof either).
    #[test]
    fn a_proofs_uri_leaves_query_and_user_info_out() {
        let req = reqwest::Request::new(
            reqwest::Method::POST,
            reqwest::Url::parse("https://svc:s3cret@api.example:8443/x?q=1#f").unwrap(),
        );
        assert_eq!(
            call_of(&req),
            ("POST".to_owned(), "https://api.example:8443/x".to_owned())
        );
    }

    /// A URL without a host gets no credential, not the `*` entry's.
    #[tokio::test]
    async fn a_url_without_a_host_gets_nothing() {
        let upstreams = Upstreams::builder().host("*", Credentials::Caller).build();
        let caller = CallerToken::from_headers(&{
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, "Bearer t".parse().unwrap());
            h
        });
        let client = reqwest::Client::new();
        // reqwest builds none, and sends none; made by hand.
        let mut req = reqwest::Request::new(
            reqwest::Method::GET,
            reqwest::Url::parse("file:///etc/hosts").unwrap(),
        );
        let err = upstreams.apply(&mut req, caller.as_ref()).await.unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err}");
        assert!(!req.headers().contains_key(http::header::AUTHORIZATION));
        let mut req = client.get("http://api.example/x").build().unwrap();
        let _nothing_cached = upstreams.apply(&mut req, caller.as_ref()).await.unwrap();
        assert!(req.headers().contains_key(http::header::AUTHORIZATION));
    }

    #[test]
    fn a_star_entry_that_sends_a_token_is_said_out_loud() {
        let said = |c: Credentials| Upstreams::builder().host("*", c).build().star_warning();
        assert!(said(Credentials::Caller).is_some_and(|w| w.contains("the caller's")));
        assert!(said(Credentials::None).is_none());
        let own = ClientCredentials::builder("https://kc.example/realms/r", "app")
            .client_secret("s")
            .build()
            .unwrap();
        assert!(said(Credentials::ClientCredentials(own)).is_some_and(|w| w.contains("own token")));
        let named = Upstreams::builder().host("reviews", Credentials::Caller).build();
        assert!(named.star_warning().is_none(), "a named host is a choice");
    }

    /// A `*` entry's Kerberos credential naming one service does not hand
    /// a ticket for it to every host: a host without an entry is refused
    /// before any ticket is asked for; a named host goes on (here to want
    /// a caller).
    #[cfg(feature = "spnego")]
    #[tokio::test]
    async fn a_star_kerberos_credential_for_one_service_goes_to_no_other_host() {
        let kerberos =
            || Credentials::Kerberos(crate::Kerberos::delegation().service("HTTP@backend.example"));
        let upstreams = Upstreams::builder()
            .host("*", kerberos())
            .host("backend.example", kerberos())
            .build();
        assert!(
            upstreams
                .star_warning()
                .is_some_and(|w| w.contains("are refused"))
        );
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        let err = upstreams
            .authorization(&uri("http://elsewhere.example/"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("HTTP@backend.example") && m.contains("`elsewhere.example` is not")),
            "{err}"
        );
        let err = upstreams
            .authorization(&uri("http://backend.example/"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NoCallerToken), "{err}");
        // Looked up by hand, as when sent by hand.
        assert!(matches!(
            upstreams.for_host("elsewhere.example"),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            upstreams.for_host("BACKEND.example."),
            Ok(Credentials::Kerberos(_))
        ));
        // Without a named service, each host's own ticket (`HTTP@host`).
        let own = Upstreams::builder()
            .host("*", Credentials::Kerberos(crate::Kerberos::delegation()))
            .build();
        let err = own
            .authorization(&uri("http://elsewhere.example/"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NoCallerToken), "{err}");
    }

    #[test]
    fn hosts_are_keyed_as_every_client_writes_them() {
        let upstreams = Upstreams::builder()
            .host("[0:0::1]", Credentials::Caller)
            .host("Reviews.Default.", Credentials::Caller)
            .build();
        for host in [
            "::1",
            "[::1]",
            "0000::0001",
            "reviews.default",
            "REVIEWS.default.",
        ] {
            assert!(
                matches!(upstreams.for_host(host), Ok(Credentials::Caller)),
                "{host}"
            );
        }
        assert!(matches!(upstreams.for_host("ratings"), Ok(Credentials::None)));
        // IPv4 as a URL parser reads it (and reqwest connects to it).
        let v4 = Upstreams::builder()
            .host("010.0.0.1", Credentials::Caller)
            .build();
        for host in ["8.0.0.1", "010.0.0.1", "0x8.0.0.1", "8.1"] {
            assert!(matches!(v4.for_host(host), Ok(Credentials::Caller)), "{host}");
        }
        assert_eq!(normalize("127.1"), "127.0.0.1");
        // An IPv4 address written as IPv6 is that address.
        assert_eq!(normalize("[::ffff:203.0.113.7]"), "203.0.113.7");
        assert_eq!(normalize("::FFFF:cb00:7107"), "203.0.113.7");
        assert_eq!(normalize("[::1]"), "::1");
        assert_eq!(normalize("0x7f.1"), "127.0.0.1");
        assert_eq!(normalize("v1.2"), "v1.2", "a name whose last label is a number");
    }

    #[test]
    fn a_credential_in_clear_to_a_remote_host_is_warned_of_once_per_host() {
        let upstreams = Upstreams::builder()
            .host("*", Credentials::Caller)
            .host("public.example", Credentials::None)
            .build();
        let first = |scheme: &str, host: &str| {
            upstreams.first_in_clear(Some(scheme), host, upstreams.for_host(host).unwrap())
        };
        assert!(first("http", "reviews.example"));
        assert!(!first("http", "REVIEWS.example."), "the same host, once");
        assert!(first("HTTP", "ratings.example"));
        for (scheme, host) in [
            ("https", "details.example"),
            ("http", "localhost"),
            ("http", "127.0.0.1"),
            ("http", "[::1]"),
            ("http", "public.example"),
        ] {
            assert!(!first(scheme, host), "{scheme}://{host}");
        }
        // Memory stays bounded: past the limit, no more warnings.
        for i in 0..WARNED_MAX {
            first("http", &format!("h{i}.example"));
        }
        assert!(!first("http", "late.example"));
    }
}
