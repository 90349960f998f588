//! [`Upstreams`] from a policy file's `UpstreamCredentials` documents.

use std::collections::HashMap;

use palisade_core::policy::{FromPolicy, PolicyError, TokenFrom, WorkloadPolicy};

use crate::{ClientCredentials, Credentials, Upstreams};

impl FromPolicy for Upstreams {
    /// What the workload sends to each host its `UpstreamCredentials`
    /// documents name; `None` when there is none.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the document and field that cannot be
    /// used: a secret file that cannot be read or is empty, a host named
    /// by two documents, `tokenExchange` (not built yet).
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError> {
        let mut hosts: HashMap<String, Credentials> = HashMap::new();
        let mut any = false;
        for (doc, spec) in policy.upstream_credentials() {
            any = true;
            let err = |field: &str, message: String| policy.error_at(doc, field, message);
            let t = &spec.token;
            let credentials = match t.from {
                TokenFrom::None => Credentials::None,
                TokenFrom::Caller => Credentials::Caller,
                TokenFrom::ClientCredentials => {
                    let secret = match (&t.client_secret_file, &t.client_secret) {
                        (Some(file), _) => {
                            let text = std::fs::read_to_string(file).map_err(|e| {
                                err(
                                    "spec.token.clientSecretFile",
                                    format!("cannot read `{file}`: {e}"),
                                )
                            })?;
                            let secret = text.trim_end_matches(['\r', '\n']).to_owned();
                            if secret.is_empty() {
                                return Err(err("spec.token.clientSecretFile", format!("`{file}` is empty")));
                            }
                            secret
                        }
                        (None, Some(secret)) => secret.clone(),
                        (None, None) => {
                            return Err(err(
                                "spec.token.clientSecretFile",
                                "the secret is required".into(),
                            ));
                        }
                    };
                    let mut b = ClientCredentials::builder(
                        t.issuer.clone().unwrap_or_default(),
                        t.client_id.clone().unwrap_or_default(),
                    )
                    .client_secret(secret);
                    if let Some(a) = &t.audience {
                        b = b.audience(a.clone());
                    }
                    if let Some(m) = t.client_auth_method {
                        b = b.client_auth_method(m);
                    }
                    if let Some(s) = &t.scopes {
                        b = b.scopes(s.iter().cloned());
                    }
                    Credentials::ClientCredentials(b.build().map_err(|e| err("spec.token", e.to_string()))?)
                }
                TokenFrom::TokenExchange => {
                    return Err(err(
                        "spec.token.from",
                        "tokenExchange is not available yet: use caller or clientCredentials".into(),
                    ));
                }
                _ => {
                    return Err(err(
                        "spec.token.from",
                        "this token source is not supported".into(),
                    ));
                }
            };
            for (i, host) in spec.hosts.iter().enumerate() {
                let host = host.to_ascii_lowercase();
                if hosts.insert(host.clone(), credentials.clone()).is_some() {
                    return Err(err(
                        &format!("spec.hosts[{i}]"),
                        format!("`{host}` is named by another UpstreamCredentials document of this workload"),
                    ));
                }
            }
        }
        Ok(any.then(|| {
            hosts
                .into_iter()
                .fold(Upstreams::builder(), |b, (host, c)| b.host(host, c))
                .build()
        }))
    }
}
