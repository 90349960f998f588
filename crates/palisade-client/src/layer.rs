//! The tower layer for HTTP clients (hyper's, tonic's channels).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{CallerToken, ClientError, Credentials, Upstreams};

/// A tower [`Layer`] for HTTP clients: sets each request's `Authorization`
/// header to what [`Upstreams`] says for its URI's host (removing any when
/// the host gets nothing), relaying the [`CallerToken`] found in the
/// request's extensions. A request that cannot get its credential fails
/// with the [`ClientError`] (boxed; with the `tonic` feature, a
/// `tonic::Status` whose source it is: [`ClientError::of`] finds it either
/// way) and is never sent; so does one whose URI
/// names no host (a `Host` header is not trusted: it need not be where the
/// request goes). A cached token the upstream refuses is renewed in the
/// background ([`Sent`](crate::Sent)); a Kerberos call's answer that does not
/// prove the upstream's identity becomes [`ClientError::Unproven`] (unless
/// [`MutualAuthentication::Optional`](crate::MutualAuthentication::Optional)
/// allows an answer without proof). For a
/// client bound to one upstream whose
/// requests carry only a path (a tonic `Channel`), use
/// [`CredentialsLayer::fixed_at`] (or [`CredentialsLayer::fixed`] where
/// no credential needs the origin: not DPoP, not Kerberos).
///
/// Put no service that follows redirects inside it (tower-http's
/// `FollowRedirect`): the credential chosen for the first host would go on
/// to the next, and that host's answer (a refusal, a `DPoP-Nonce`) would be
/// taken for the first host's. Follow redirects outside it, where each hop
/// is a request of its own.
#[derive(Clone, Debug)]
pub struct CredentialsLayer(Target);

/// Whose credentials a request gets.
#[derive(Clone, Debug)]
enum Target {
    ByHost(Upstreams),
    /// One upstream's, and where its requests go when their URIs carry a
    /// path only (`scheme://authority`, and the host alone).
    Fixed(Credentials, Option<(Arc<str>, Arc<str>)>),
}

impl CredentialsLayer {
    /// The layer for these upstreams, by each request's URI host.
    #[must_use]
    pub fn new(upstreams: Upstreams) -> Self {
        Self(Target::ByHost(upstreams))
    }

    /// The layer of a client that calls one upstream: every request gets
    /// `credentials`, whatever its URI. A request whose URI carries a path
    /// only (a tonic `Channel`'s) cannot carry a DPoP-bound token (its
    /// proof names the URI) nor get a Kerberos ticket (which names the
    /// host) this way: use [`fixed_at`](Self::fixed_at).
    #[must_use]
    pub fn fixed(credentials: Credentials) -> Self {
        Self(Target::Fixed(credentials, None))
    }

    /// [`fixed`](Self::fixed) for a client whose requests go to `origin`
    /// (`https://ratings.default.svc.cluster.local:9080`) and carry a path
    /// only: a DPoP proof names `origin` + the path, a Kerberos ticket is
    /// for `HTTP@` its host. Give the origin as the server sees it: `https`
    /// over TLS, even where the channel's own endpoint says `http` (a
    /// tonic `Channel` with a TLS connector of its own), or the server
    /// refuses every proof. A request whose URI names its own scheme and
    /// host keeps them.
    ///
    /// # Errors
    /// [`ClientError::Config`] when `origin` is not `http(s)://host[:port]`.
    pub fn fixed_at(credentials: Credentials, origin: &str) -> Result<Self, ClientError> {
        let shown = palisade_core::syntax::url_without_credentials(origin);
        let not_origin =
            || ClientError::Config(format!("`{shown}` is not an origin such as http://ratings:9080"));
        let uri: http::Uri = origin
            .parse()
            .map_err(|_| ClientError::Config(format!("`{shown}` is not a URI")))?;
        // No credentials in it (`user:pass@`): an origin has none, and
        // they would be kept and shown.
        let (Some(scheme @ ("http" | "https")), Some(authority), Some(host), "" | "/", None) = (
            uri.scheme_str(),
            uri.authority().filter(|a| !a.as_str().contains('@')),
            uri.host(),
            uri.path(),
            uri.query(),
        ) else {
            return Err(not_origin());
        };
        let origin: Arc<str> = format!("{scheme}://{authority}").into();
        let host: Arc<str> = host.trim_start_matches('[').trim_end_matches(']').into();
        Ok(Self(Target::Fixed(credentials, Some((origin, host)))))
    }
}

impl<S> Layer<S> for CredentialsLayer {
    type Service = CredentialsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CredentialsService {
            inner,
            target: self.0.clone(),
        }
    }
}

/// The service of [`CredentialsLayer`].
#[derive(Clone, Debug)]
pub struct CredentialsService<S> {
    inner: S,
    target: Target,
}

/// The error of a [`CredentialsService`]: the inner service's, or a
/// [`ClientError`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, R> Service<http::Request<B>> for CredentialsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    /// Always ready: the inner service is asked once a call's credential
    /// is known, so that a call waiting for its token (an issuer or a KDC
    /// that is slow) holds no place another call needs in the inner
    /// service (a tonic `Channel`'s buffer, a concurrency limit).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let target = self.target.clone();
        Box::pin(async move {
            let caller = req.extensions().get::<CallerToken>().cloned();
            let (credentials, origin) = match &target {
                Target::Fixed(c, origin) => (c, origin.as_ref()),
                Target::ByHost(upstreams) => {
                    let host = req.uri().host().ok_or_else(|| {
                        credential_error(ClientError::Config("the request's URI names no host".into()))
                    })?;
                    (
                        upstreams
                            .for_call(req.uri().scheme_str(), host)
                            .map_err(credential_error)?,
                        None,
                    )
                }
            };
            let path = req.uri().path();
            // The `htu` of a DPoP proof: the URI without its query, nor
            // user-info (never sent on the wire: a password there would
            // be, inside the proof); the host a Kerberos ticket is for.
            let (htu, host) = match (req.uri().scheme_str(), req.uri().authority(), origin) {
                (Some(scheme), Some(authority), _) => (
                    Some(htu(scheme, authority.as_str(), path)),
                    req.uri().host().map(str::to_owned),
                ),
                (_, _, Some((origin, host))) => (Some(format!("{origin}{path}")), Some(host.to_string())),
                _ => (None, req.uri().host().map(str::to_owned)),
            };
            let method = req.method().as_str().to_owned();
            let call = htu.as_deref().map(|htu| (method.as_str(), htu));
            // A gRPC call's deadline counts the time its credential takes
            // (a grant, an exchange), as gRPC's call credentials do: tonic
            // times the call only once the channel has it, after this.
            let deadline = req
                .headers()
                .get(GRPC_TIMEOUT)
                .and_then(|v| grpc_timeout(v.as_bytes()));
            let started = std::time::Instant::now();
            let applied = credentials.apply_call(req.headers_mut(), host.as_deref(), caller.as_ref(), call);
            let sent = match deadline {
                Some(d) => tokio::time::timeout(d, applied)
                    .await
                    .unwrap_or(Err(ClientError::DeadlineExceeded)),
                None => applied.await,
            }
            .map_err(credential_error)?;
            // The upstream gets what is left of it.
            if let Some(d) = deadline {
                let left = d.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(credential_error(ClientError::DeadlineExceeded));
                }
                req.headers_mut().insert(GRPC_TIMEOUT, grpc_timeout_value(left));
            }
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let res = inner.call(req).await.map_err(Into::into)?;
            sent.answered(res.status(), res.headers())
                .map_err(credential_error)?;
            Ok(res)
        })
    }
}

/// gRPC's deadline header.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value (at most eight digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`), if it is one.
fn grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value: milliseconds (rounded up, so that a
/// call with time left is not sent with none), or seconds past eight
/// digits of them.
fn grpc_timeout_value(left: std::time::Duration) -> http::HeaderValue {
    let ms = left.as_nanos().div_ceil(1_000_000);
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static("99999999S"))
}

/// A [`ClientError`] as the service's error: with the `tonic` feature, a
/// [`tonic::Status`] whose source it is, which a tonic client returns as
/// it is (`UNAUTHENTICATED` for a credential the issuer refused or the
/// caller lacks, as gRPC's status codes say of call credentials;
/// `UNAVAILABLE` for an issuer out of reach or an upstream that did not
/// prove itself; `DEADLINE_EXCEEDED` for a call whose `grpc-timeout`
/// passed while its credential was being got; `INTERNAL` for a setting
/// that cannot work), where the
/// error alone would be `UNKNOWN`.
fn credential_error(e: ClientError) -> BoxError {
    #[cfg(feature = "tonic")]
    {
        let code = match &e {
            ClientError::NoCallerToken | ClientError::CallerTokenBound | ClientError::Refused(_) => {
                tonic::Code::Unauthenticated
            }
            ClientError::Unavailable(_) | ClientError::Unproven(_) => tonic::Code::Unavailable,
            ClientError::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        status.set_source(std::sync::Arc::new(e));
        Box::new(status)
    }
    #[cfg(not(feature = "tonic"))]
    {
        Box::new(e)
    }
}

/// A DPoP proof's `htu` for a request to `scheme://authority/path`: without
/// the authority's user-info, which is never sent on the wire.
fn htu(scheme: &str, authority: &str, path: &str) -> String {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod htu_tests {
    #[test]
    fn a_proofs_uri_leaves_the_user_info_out() {
        assert_eq!(
            super::htu("https", "svc:s3cret@api.example:8443", "/x"),
            "https://api.example:8443/x"
        );
        assert_eq!(super::htu("http", "api.example", "/"), "http://api.example/");
    }
}

#[cfg(all(test, feature = "tonic"))]
mod tonic_tests {
    use std::error::Error as _;

    use tower::ServiceExt as _;
    use tower_layer::Layer as _;

    use super::*;
    use crate::Credentials;

    /// A call that gets no credential fails as a `tonic::Status` of the
    /// code gRPC gives call credentials that fail, the `ClientError` its
    /// source; a tonic client would otherwise report `UNKNOWN`.
    #[tokio::test]
    async fn a_call_without_the_callers_token_is_unauthenticated_for_tonic() {
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let svc = CredentialsLayer::fixed(Credentials::Caller).layer(inner);
        let req = http::Request::get("http://ratings:9080/x").body(()).unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(matches!(
            status.source().and_then(|s| s.downcast_ref::<ClientError>()),
            Some(ClientError::NoCallerToken)
        ));
    }
}

#[cfg(test)]
mod grpc_timeout_tests {
    use std::time::Duration;

    use super::{grpc_timeout, grpc_timeout_value};

    #[test]
    fn a_grpc_timeout_is_read_and_written_as_grpc_writes_it() {
        assert_eq!(grpc_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_micros(1500)), "2m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
    }
}
