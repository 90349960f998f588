//! The tower layer for HTTP clients (hyper's, tonic's channels).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{CallerToken, ClientError, Credentials, Upstreams};

/// A tower [`Layer`] for HTTP clients: sets each request's `Authorization`
/// header to what [`Upstreams`] says for its URI's host (removing any when
/// the host gets nothing), relaying the [`CallerToken`] found in the
/// request's extensions. A request that cannot get its credential fails
/// with the [`ClientError`] (boxed) and is never sent; so does one whose URI
/// names no host (a `Host` header is not trusted: it need not be where the
/// request goes). For a client bound to one upstream whose requests carry
/// only a path (a tonic `Channel`), use [`CredentialsLayer::fixed`].
#[derive(Clone, Debug)]
pub struct CredentialsLayer(Target);

/// Whose credentials a request gets.
#[derive(Clone, Debug)]
enum Target {
    ByHost(Upstreams),
    Fixed(Credentials),
}

impl CredentialsLayer {
    /// The layer for these upstreams, by each request's URI host.
    #[must_use]
    pub fn new(upstreams: Upstreams) -> Self {
        Self(Target::ByHost(upstreams))
    }

    /// The layer of a client that calls one upstream: every request gets
    /// `credentials`, whatever its URI.
    #[must_use]
    pub fn fixed(credentials: Credentials) -> Self {
        Self(Target::Fixed(credentials))
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

impl<S, B> Service<http::Request<B>> for CredentialsService<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The service polled ready is the one that is called; a clone takes
        // its place for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let target = self.target.clone();
        Box::pin(async move {
            let caller = req.extensions().get::<CallerToken>().cloned();
            let credentials = match &target {
                Target::Fixed(c) => c,
                Target::ByHost(upstreams) => {
                    let host = req
                        .uri()
                        .host()
                        .ok_or_else(|| ClientError::Config("the request's URI names no host".into()))?;
                    upstreams.for_call(req.uri().scheme_str(), host)
                }
            };
            let host = req.uri().host().map(str::to_owned);
            // The `htu` of a DPoP proof: the URI without its query.
            let htu = match (req.uri().scheme_str(), req.uri().authority()) {
                (Some(scheme), Some(authority)) => {
                    Some(format!("{scheme}://{authority}{}", req.uri().path()))
                }
                _ => None,
            };
            let method = req.method().as_str().to_owned();
            let call = htu.as_deref().map(|htu| (method.as_str(), htu));
            credentials
                .apply_call(req.headers_mut(), host.as_deref(), caller.as_ref(), call)
                .await?;
            inner.call(req).await.map_err(Into::into)
        })
    }
}
