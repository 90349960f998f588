//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the document that tells
//! a client which authorization servers issue tokens for this service, and
//! the `resource_metadata` parameter of its challenges that points there
//! (what the MCP authorization specification asks of a server).

use serde_json::{Value, json};

use crate::config::ConfigError;

/// This service's protected-resource metadata, served by the JWT
/// authenticator at the well-known URL RFC 9728 §3.1 derives from the
/// resource identifier and named in every `WWW-Authenticate: Bearer`
/// challenge it sends.
///
/// `authorization_servers` lists the issuers the authenticator trusts
/// (those that are http(s) URLs), and `bearer_methods_supported` the places
/// it reads tokens from (`header` for `Authorization: Bearer`, `query`);
/// the rest comes from here.
///
/// ```
/// use palisade_jwt::{JwtAuthenticator, Provider, ResourceMetadata};
/// let jwt = JwtAuthenticator::builder()
///     .provider(Provider::builder("https://kc.example/realms/shop").audience("details").build()?)
///     .resource_metadata(ResourceMetadata::new("https://shop.example/details").scopes(["read"]))
///     .build()?;
/// assert_eq!(
///     jwt.resource_metadata_url(),
///     Some("https://shop.example/.well-known/oauth-protected-resource/details")
/// );
/// # Ok::<(), palisade_jwt::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct ResourceMetadata {
    pub(crate) resource: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) name: Option<String>,
    pub(crate) documentation: Option<String>,
}

impl ResourceMetadata {
    /// Metadata for the resource identified by `resource`: the service's
    /// own `https` URL, as clients know it (RFC 9728 §1.2; the audience its
    /// tokens should name).
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            scopes: Vec::new(),
            name: None,
            documentation: None,
        }
    }

    /// `scopes_supported`.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// `resource_name`: a name for people.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `resource_documentation`: a URL of documentation for developers.
    pub fn documentation(mut self, url: impl Into<String>) -> Self {
        self.documentation = Some(url.into());
        self
    }
}

/// `scheme://host[:port]` of an http(s) URL, if it is one.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let origin = &url[..url.len() - rest.len() + authority.len()];
    is_origin(origin).then(|| origin.to_owned())
}

pub(crate) use palisade_core::syntax::is_origin;

/// The metadata, checked, as served.
#[derive(Debug)]
pub(crate) struct Served {
    /// Where it is served: `https://host/.well-known/oauth-protected-resource/path`.
    pub(crate) url: String,
    /// The path of `url`, the one requests arrive with.
    pub(crate) path: String,
    /// The JSON document.
    pub(crate) body: String,
}

impl Served {
    /// Checks `meta` and renders its document for `issuers` and `bearer_methods`.
    pub(crate) fn new(
        meta: &ResourceMetadata,
        issuers: &[String],
        bearer_methods: &[&str],
        dpop_algs: &[String],
    ) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::OutOfRange(format!(
                "resource metadata: `{}` {why}",
                palisade_core::syntax::url_without_credentials(&meta.resource)
            ))
        };
        if let Some(why) = palisade_core::syntax::resource_identifier_problem(&meta.resource) {
            return Err(bad(why));
        }
        let rest = meta
            .resource
            .strip_prefix("https://")
            .or_else(|| meta.resource.strip_prefix("http://"))
            .unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let scheme = &meta.resource[..meta.resource.len() - rest.len()];
        let path = path.trim_end_matches('/');
        let served_path = format!("/.well-known/oauth-protected-resource{path}");
        let mut doc = json!({
            "resource": meta.resource,
            "authorization_servers": issuers
                .iter()
                .filter(|i| i.starts_with("https://") || i.starts_with("http://"))
                .collect::<Vec<_>>(),
            "bearer_methods_supported": bearer_methods,
        });
        let obj = doc.as_object_mut().expect("an object");
        if !meta.scopes.is_empty() {
            obj.insert("scopes_supported".into(), json!(meta.scopes));
        }
        if !dpop_algs.is_empty() {
            obj.insert("dpop_signing_alg_values_supported".into(), json!(dpop_algs));
        }
        if let Some(n) = &meta.name {
            obj.insert("resource_name".into(), Value::String(n.clone()));
        }
        if let Some(d) = &meta.documentation {
            obj.insert("resource_documentation".into(), Value::String(d.clone()));
        }
        Ok(Self {
            url: format!("{scheme}{authority}{served_path}"),
            path: served_path,
            body: doc.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            origin_of("https://shop.example:8443/details").as_deref(),
            Some("https://shop.example:8443")
        );
        assert_eq!(
            origin_of("https://shop.example").as_deref(),
            Some("https://shop.example")
        );
        assert!(is_origin("http://127.0.0.1:8080/"));
        for bad in [
            "https://u@host",
            "https://host?x",
            "https://host#f",
            "https://host/path",
            "ftp://host",
            "https://",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn the_well_known_url_is_inserted_between_host_and_path() {
        let s = Served::new(
            &ResourceMetadata::new("https://api.example:8443/v1/details/"),
            &[],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.url,
            "https://api.example:8443/.well-known/oauth-protected-resource/v1/details"
        );
        assert_eq!(s.path, "/.well-known/oauth-protected-resource/v1/details");
        let root = Served::new(&ResourceMetadata::new("https://api.example"), &[], &[], &[]).unwrap();
        assert_eq!(
            root.url,
            "https://api.example/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn the_document_names_the_issuers_and_methods() {
        let meta = ResourceMetadata::new("https://api.example/details")
            .scopes(["read", "write"])
            .name("Details")
            .documentation("https://docs.example/details");
        let s = Served::new(
            &meta,
            &[
                "https://kc.example/realms/shop".to_owned(),
                "testing@secure.istio.io".to_owned(),
            ],
            &["header"],
            &["ES256".to_owned()],
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(doc["resource"], "https://api.example/details");
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://kc.example/realms/shop"])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["scopes_supported"], json!(["read", "write"]));
        assert_eq!(doc["resource_name"], "Details");
        assert_eq!(doc["dpop_signing_alg_values_supported"], json!(["ES256"]));
        assert_eq!(doc["resource_documentation"], "https://docs.example/details");
    }

    #[test]
    fn resources_that_are_not_plain_urls_are_refused() {
        for bad in [
            "details",
            "https://",
            "https://api.example/x?y=1",
            "https://api.example/#f",
            "https://api.example/a b",
            "https://api.example/\"x",
            "https://user:s3cret@api.example/x",
        ] {
            let err = Served::new(&ResourceMetadata::new(bad), &[], &[], &[]).unwrap_err();
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
