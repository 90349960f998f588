//! The tower layer for HTTP clients (hyper's, tonic's channels).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{CallerToken, ClientError, Upstreams};

/// A tower [`Layer`] for HTTP clients: sets each request's `Authorization`
/// header to what [`Upstreams`] says for its host (the URI's, else the
/// `Host` header's), relaying the [`CallerToken`] found in the request's
/// extensions. A request that cannot get its credential fails with the
/// [`ClientError`] (boxed) and is never sent.
#[derive(Clone, Debug)]
pub struct CredentialsLayer(Upstreams);

impl CredentialsLayer {
    /// The layer for these upstreams.
    #[must_use]
    pub fn new(upstreams: Upstreams) -> Self {
        Self(upstreams)
    }
}

impl<S> Layer<S> for CredentialsLayer {
    type Service = CredentialsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CredentialsService {
            inner,
            upstreams: self.0.clone(),
        }
    }
}

/// The service of [`CredentialsLayer`].
#[derive(Clone, Debug)]
pub struct CredentialsService<S> {
    inner: S,
    upstreams: Upstreams,
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
        let upstreams = self.upstreams.clone();
        Box::pin(async move {
            let host = req
                .uri()
                .host()
                .map(str::to_owned)
                .or_else(|| {
                    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
                    let authority: http::uri::Authority = host.parse().ok()?;
                    Some(authority.host().to_owned())
                })
                .unwrap_or_default();
            let caller = req.extensions().get::<CallerToken>().cloned();
            let value = upstreams.for_host(&host).authorization(caller.as_ref()).await?;
            if let Some(value) = value {
                let value = http::HeaderValue::from_str(&value)
                    .map_err(|_| ClientError::Config("the token cannot be sent in a header".into()))?;
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
            inner.call(req).await.map_err(Into::into)
        })
    }
}
