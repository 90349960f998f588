//! [`Upstreams`] from a policy file's `UpstreamCredentials` documents.

use std::collections::HashMap;

use palisade_core::policy::{
    Document, FromPolicy, PolicyError, TokenFrom, UpstreamTokenSpec, WorkloadPolicy, read_secret_file,
};

use crate::endpoint::GrantBuilder;
use crate::{ClientCredentials, Credentials, TokenExchange, Upstreams};

/// A grant's builder with the document's client, secret, audience, scopes
/// and authentication method.
fn grant<K>(
    policy: &WorkloadPolicy<'_>,
    doc: &Document,
    t: &UpstreamTokenSpec,
) -> Result<GrantBuilder<K>, PolicyError> {
    let secret = match (&t.client_secret_file, &t.client_secret) {
        (Some(file), _) => read_secret_file(file).map_err(|e| {
            policy
                .error_at(doc, "spec.token.clientSecretFile", e.to_string())
                .with_source(e)
        })?,
        (None, Some(secret)) => secret.clone(),
        (None, None) => {
            return Err(policy.error_at(doc, "spec.token.clientSecretFile", "the secret is required"));
        }
    };
    let mut b = GrantBuilder::new(
        t.issuer.clone().unwrap_or_default(),
        t.client_id.clone().unwrap_or_default(),
    )
    .client_secret(secret);
    if let Some(a) = &t.audience {
        b = b.audience(a.clone());
    }
    if let Some(s) = &t.scopes {
        b = b.scopes(s.iter().cloned());
    }
    if let Some(m) = t.client_auth_method {
        b = b.client_auth_method(m);
    }
    if t.dpop == Some(true) {
        // A key of this process: its tokens are bound to it.
        let key = palisade_jwt::dpop::DpopKey::generate()
            .map_err(|e| policy.error_at(doc, "spec.token.dpop", e.to_string()))?;
        b = b.dpop(key);
    }
    Ok(b)
}

impl FromPolicy for Upstreams {
    /// What the workload sends to each host its `UpstreamCredentials`
    /// documents name; `None` when there is none.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field that cannot be
    /// used: a secret file that cannot be read or is empty, a host named
    /// by two documents.
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError> {
        Ok(hosts_of(policy)?.map(|hosts| {
            hosts
                .into_iter()
                .fold(Upstreams::builder(), |b, (host, c)| b.host(host, c))
                .build()
        }))
    }
}

impl Upstreams {
    /// Checks the workload's `UpstreamCredentials` documents as
    /// [`from_policy`](FromPolicy::from_policy) reads them (the secret
    /// files too), without building the map: nothing is said about what it
    /// would send (the `*` entry's warning), for a reload that checks a
    /// file before it builds anything, or a tool that checks a policy
    /// file.
    ///
    /// # Errors
    /// As [`from_policy`](FromPolicy::from_policy).
    pub fn check_policy(policy: &WorkloadPolicy<'_>) -> Result<(), PolicyError> {
        hosts_of(policy).map(drop)
    }
}

/// The credentials of each host the workload's `UpstreamCredentials`
/// documents name; `None` when there is no such document.
fn hosts_of(policy: &WorkloadPolicy<'_>) -> Result<Option<HashMap<String, Credentials>>, PolicyError> {
    let mut hosts: HashMap<String, Credentials> = HashMap::new();
    let mut any = false;
    for (doc, spec) in policy.upstream_credentials() {
        any = true;
        let t = &spec.token;
        let built = |e: crate::ClientError| policy.error_at(doc, "spec.token", e.to_string());
        let credentials = match t.from {
            TokenFrom::None => Credentials::None,
            TokenFrom::Caller => Credentials::Caller,
            TokenFrom::ClientCredentials => Credentials::ClientCredentials(
                grant::<ClientCredentials>(policy, doc, t)?
                    .build()
                    .map_err(built)?,
            ),
            TokenFrom::TokenExchange => {
                let b = grant::<TokenExchange>(policy, doc, t)?;
                let b = t
                    .subject_issuers
                    .iter()
                    .flatten()
                    .fold(b, |b, i| b.subject_issuer(i.clone()));
                Credentials::TokenExchange(b.build().map_err(built)?)
            }
            _ => {
                return Err(policy.error_at(doc, "spec.token.from", "this token source is not supported"));
            }
        };
        for (i, host) in spec.hosts.iter().enumerate() {
            // As the map keys it: `reviews.` and `Reviews` are `reviews`.
            let host = crate::upstreams::normalize(host);
            if hosts.insert(host.clone(), credentials.clone()).is_some() {
                // Named earlier in this document's own list, or by another
                // document's.
                let here = spec.hosts[..i]
                    .iter()
                    .position(|h| crate::upstreams::normalize(h) == host);
                let by = match here {
                    Some(j) => format!("spec.hosts[{j}] of this document"),
                    None => "another UpstreamCredentials document of this workload".to_owned(),
                };
                return Err(policy.error_at(
                    doc,
                    &format!("spec.hosts[{i}]"),
                    format!("`{host}` is named by {by} too"),
                ));
            }
        }
    }
    Ok(any.then_some(hosts))
}
