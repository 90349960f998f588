//! The workload's own token: a client-credentials grant (RFC 6749 4.4),
//! cached and renewed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Mutex, OwnedMutexGuard};

// After a failed grant, the next is tried `RETRY_AFTER` later: meanwhile
// the current token is used while it is valid, and the failure is the
// answer when none is.
use crate::endpoint::{GrantBuilder, Granted, RETRY_AFTER, TokenClient};
use crate::{ClientError, LOG_TARGET};

struct Inner {
    client: TokenClient,
    audience: Option<String>,
    scope: Option<String>,
    renew_before: Duration,
    current: ArcSwapOption<Granted>,
    /// The last failure to get a token, and when.
    failed: ArcSwapOption<(Instant, ClientError)>,
    /// Held by the one renewal under way (in the background, or
    /// `renew_detached`).
    renewing: Arc<Mutex<()>>,
}

/// The workload's own access token from the issuer's client-credentials
/// grant (a Keycloak service account): fetched on first use and shared by
/// every call; renewed when less than [`renew_before`](ClientCredentialsBuilder::renew_before)
/// is left, in the background while every call keeps the current token; kept
/// for as long as it is valid when a renewal fails (the issuer cannot be
/// reached, or refuses: a token it issued stays valid where upstreams check
/// tokens themselves, as Spring Security uses one until it expires). After a
/// failed grant the issuer is asked again a second later at the earliest:
/// meanwhile the failure is every call's answer when no token is valid. The
/// client authenticates with its secret (`client_secret_basic` or
/// `client_secret_post`); the token endpoint comes from the issuer's
/// discovery document.
///
/// Cloning is an `Arc` clone. `Debug` prints no secret and no token.
#[derive(Clone)]
pub struct ClientCredentials(Arc<Inner>);

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("issuer", &self.0.client.shown)
            .field("client_id", &self.0.client.client_id)
            .field("audience", &self.0.audience)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ClientCredentials`].
pub type ClientCredentialsBuilder = GrantBuilder<ClientCredentials>;

impl GrantBuilder<ClientCredentials> {
    /// Builds it; nothing is fetched before the first call.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the setting that cannot work.
    pub fn build(self) -> Result<ClientCredentials, ClientError> {
        let client = self.client("client-credentials grant")?;
        Ok(ClientCredentials(Arc::new(Inner {
            client,
            scope: self.scope(),
            audience: self.audience,
            renew_before: self.renew_before,
            current: ArcSwapOption::empty(),
            failed: ArcSwapOption::empty(),
            renewing: Arc::new(Mutex::new(())),
        })))
    }
}

impl ClientCredentials {
    /// Starts building the grant of client `client_id` at `issuer`.
    pub fn builder(issuer: impl Into<String>, client_id: impl Into<String>) -> ClientCredentialsBuilder {
        GrantBuilder::new(issuer.into(), client_id.into())
    }

    /// The `Authorization` header value (`Bearer …`) of the current token,
    /// fetching or renewing it when needed.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the issuer refuses the grant,
    /// [`ClientError::Unavailable`] when it cannot be reached and no valid
    /// token is at hand.
    pub async fn authorization(&self) -> Result<Arc<str>, ClientError> {
        self.granted().await.map(|g| Arc::clone(&g.header))
    }

    /// The upstream refused `sent`: when it is still the current token (and
    /// not fresh), it is due for renewal, and the next call starts one in
    /// the background (using it meanwhile, and while the issuer cannot
    /// be reached, as a token due is).
    pub(crate) fn refused(&self, sent: &http::HeaderValue) {
        if self.0.current.load().as_ref().is_some_and(|g| g.refuse(sent)) {
            tracing::info!(target: LOG_TARGET, issuer = %self.0.client.shown, "the upstream refused the workload's token: it is renewed");
        }
    }

    /// The current token, fetching or renewing it when needed.
    pub(crate) async fn granted(&self) -> Result<Arc<Granted>, ClientError> {
        let started = Instant::now();
        let recently = started.checked_sub(RETRY_AFTER).unwrap_or(started);
        if let Some(g) = self.0.current.load().as_ref() {
            if !g.due(started) {
                return Ok(Arc::clone(g));
            }
            // Due for renewal but still valid: renewed in the background,
            // used meanwhile by every request (the one that started the
            // renewal too: none waits on the issuer while a token is
            // valid); after a failed renewal, the next try waits for
            // RETRY_AFTER.
            if started < g.expires {
                if self.failed_since(recently).is_some() {
                    return Ok(Arc::clone(g));
                }
                let Ok(renewing) = Arc::clone(&self.0.renewing).try_lock_owned() else {
                    return Ok(Arc::clone(g));
                };
                // Renewed by another request since the load above.
                let current = self.0.current.load_full();
                if let Some(c) = &current
                    && !c.due(Instant::now())
                {
                    return Ok(Arc::clone(c));
                }
                let current = current.unwrap_or_else(|| Arc::clone(g));
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return self.renew(Some(&current)).await;
                };
                let this = self.clone();
                let keep = Arc::clone(&current);
                runtime.spawn(async move {
                    let _renewing = renewing;
                    let _ = this.renew(Some(&keep)).await;
                });
                return Ok(current);
            }
        }
        // No valid token, and the last grant failed a moment ago: its
        // answer is this request's too.
        if let Some(e) = self.failed_since(recently) {
            return Err(e);
        }
        let renewing = Arc::clone(&self.0.renewing).lock_owned().await;
        // Renewed while this request waited: a token asked for after it
        // arrived is its answer, even one the issuer grants for so short a
        // time that it is due at once (else each waiting request would ask
        // for one more in turn, one round trip after another).
        let current = self.0.current.load_full();
        if let Some(g) = &current
            && (!g.due(Instant::now()) || g.obtained >= started)
        {
            return Ok(Arc::clone(g));
        }
        // The request that held the lock meanwhile failed, or one just
        // before: its answer is this one's too, rather than one more wait
        // on the issuer each.
        if let Some(e) = self.failed_since(recently) {
            return current.filter(|g| Instant::now() < g.expires).ok_or(e);
        }
        self.renew_detached(renewing, current).await
    }

    /// [`renew`](Self::renew) on a task of its own, which holds
    /// `renewing` to its end: a request that gives up (a client that hangs
    /// up, a deadline above this layer) does not take the grant with it,
    /// so the token the issuer grants is kept for the next request rather
    /// than asked for again by each in turn.
    async fn renew_detached(
        &self,
        renewing: OwnedMutexGuard<()>,
        current: Option<Arc<Granted>>,
    ) -> Result<Arc<Granted>, ClientError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.renew(current.as_ref()).await;
        };
        let this = self.clone();
        let task = runtime.spawn(async move {
            let _renewing = renewing;
            this.renew(current.as_ref()).await
        });
        task.await
            .unwrap_or_else(|e| Err(ClientError::Unavailable(format!("the grant's task ended: {e}"))))
    }

    /// The last failure to get a token, when it happened at or after `t`.
    fn failed_since(&self, t: Instant) -> Option<ClientError> {
        let failed = self.0.failed.load();
        failed
            .as_deref()
            .filter(|(at, _)| *at >= t)
            .map(|(_, e)| e.clone())
    }

    /// Asks for a new token (the caller holds `renewing`); on failure keeps
    /// `current` while it is valid.
    async fn renew(&self, current: Option<&Arc<Granted>>) -> Result<Arc<Granted>, ClientError> {
        match self.grant().await {
            Ok(g) => {
                let g = Arc::new(g);
                self.0.current.store(Some(Arc::clone(&g)));
                self.0.failed.store(None);
                Ok(g)
            }
            Err(e) => {
                self.0.failed.store(Some(Arc::new((Instant::now(), e.clone()))));
                match current {
                    Some(g) if g.expires > Instant::now() => {
                        tracing::warn!(target: LOG_TARGET, issuer = %self.0.client.shown, error = %e, "cannot renew the workload's token; the current one is used until it expires");
                        Ok(Arc::clone(g))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn grant(&self) -> Result<Granted, ClientError> {
        let inner = &*self.0;
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &inner.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &inner.audience {
            // Keycloak sets a service account token's `aud` by its mappers.
            crate::endpoint::push_audience(&mut form, audience);
        }
        let granted = inner.client.request(form, inner.renew_before).await?;
        tracing::debug!(target: LOG_TARGET, issuer = %inner.client.shown, "the workload's token was granted");
        Ok(granted)
    }
}
