//! An issuer's discovery document, read and checked in one place for every
//! Palisade crate that reads one: the key stores (`jwks_uri`), token
//! introspection (`introspection_endpoint`), browser sign-in (the
//! authorization, token and logout endpoints) and the outbound client (the
//! token endpoint).

use serde_json::Value;

use palisade_core::syntax::{is_http_url, url_without_credentials};

/// An issuer's OpenID Connect discovery document
/// (`/.well-known/openid-configuration`, RFC 8414's metadata), fetched and
/// checked to name the issuer it was asked of.
#[derive(Debug)]
pub struct Discovery {
    /// Where it was read, as logs and errors say it: without credentials.
    shown: String,
    /// Read over `https`: every endpoint it names must be too.
    over_tls: bool,
    /// A JSON object.
    document: Value,
}

/// Why a discovery document cannot be used. Its text names the document's
/// URL (without credentials) and the member at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DiscoveryError(String);

impl Discovery {
    /// Fetches `issuer`'s document with `client`, reading at most
    /// `max_body` bytes of it (as key sets are read: `Accept:
    /// application/json`, an HTML page refused unread), and checks that its
    /// `issuer` is `issuer`, exactly (OpenID Connect Discovery §4.3).
    ///
    /// # Errors
    /// A [`DiscoveryError`]: the issuer cannot be reached or answers no
    /// JSON object, or the document names another issuer.
    pub async fn fetch(
        client: &reqwest::Client,
        issuer: &str,
        max_body: usize,
    ) -> Result<Self, DiscoveryError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = crate::jwks::get(client, &url, max_body)
            .await
            .map_err(DiscoveryError)?;
        Self::read(&url, issuer, &body)
    }

    /// The document at `url`, of `issuer`, whose body is `body`.
    fn read(url: &str, issuer: &str, body: &[u8]) -> Result<Self, DiscoveryError> {
        let shown = url_without_credentials(url);
        let document = match serde_json::from_slice(body) {
            Ok(document @ Value::Object(_)) => document,
            _ => return Err(DiscoveryError(format!("{shown}: not a JSON object"))),
        };
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(DiscoveryError(format!(
                "{shown}: `issuer` is not the configured issuer `{}`",
                url_without_credentials(issuer)
            )));
        }
        Ok(Self {
            over_tls: url.starts_with("https://"),
            shown,
            document,
        })
    }

    /// [`fetch`](Self::fetch), then [`required_endpoint`](Self::required_endpoint)
    /// `member`: for a caller that needs one endpoint of the document.
    ///
    /// # Errors
    /// Those of both.
    pub async fn fetch_endpoint(
        client: &reqwest::Client,
        issuer: &str,
        max_body: usize,
        member: &str,
    ) -> Result<String, DiscoveryError> {
        let discovery = Self::fetch(client, issuer, max_body).await?;
        discovery.required_endpoint(member).map(str::to_owned)
    }

    /// The endpoint the document names in `member`, if it names one: an
    /// http(s) URL, and an `https` one when the document came over `https`
    /// (a token, a code or a client's secret sent there must not leave TLS
    /// on a document's say, which is how a proxy in front of an issuer that
    /// believes itself on plain http answers).
    ///
    /// # Errors
    /// A [`DiscoveryError`] naming `member`: not a string, not an http(s)
    /// URL, or plain `http` in a document read over `https`.
    pub fn endpoint(&self, member: &str) -> Result<Option<&str>, DiscoveryError> {
        // `null` is no endpoint, as an absent member.
        let Some(value) = self.document.get(member).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let shown = &self.shown;
        let Some(url) = value.as_str().filter(|u| is_http_url(u)) else {
            return Err(DiscoveryError(format!(
                "{shown}: `{member}` is not an http(s) URL"
            )));
        };
        if self.over_tls && !url.starts_with("https://") {
            return Err(DiscoveryError(format!(
                "{shown}: `{member}` `{}` is plain http in a document served over https",
                url_without_credentials(url)
            )));
        }
        Ok(Some(url))
    }

    /// [`endpoint`](Self::endpoint), which the document must name.
    ///
    /// # Errors
    /// [`endpoint`](Self::endpoint)'s, and a [`DiscoveryError`] naming
    /// `member` when the document has none.
    pub fn required_endpoint(&self, member: &str) -> Result<&str, DiscoveryError> {
        self.endpoint(member)?
            .ok_or_else(|| DiscoveryError(format!("{}: no `{member}`", self.shown)))
    }

    /// The whole document, a JSON object: for its other members.
    #[must_use]
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Where it was read, without credentials: for what logs say of it.
    #[must_use]
    pub fn shown_url(&self) -> &str {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://idp.example/realms/shop";
    const URL: &str = "https://idp.example/realms/shop/.well-known/openid-configuration";

    fn read(url: &str, document: &str) -> Result<Discovery, DiscoveryError> {
        Discovery::read(url, ISSUER, document.as_bytes())
    }

    /// A document read over https names https endpoints only; one read over
    /// plain http (an issuer on loopback) may name either.
    #[test]
    fn an_https_document_names_https_endpoints_only() {
        let doc = format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"http://idp.example/token","jwks_uri":"https://idp.example/certs","x":7,"nothing":null}}"#
        );
        let over_tls = read(URL, &doc).unwrap();
        let err = over_tls.endpoint("token_endpoint").unwrap_err().to_string();
        assert!(
            err.contains("`token_endpoint`") && err.contains("plain http"),
            "{err}"
        );
        assert_eq!(
            over_tls.required_endpoint("jwks_uri").unwrap(),
            "https://idp.example/certs"
        );
        assert_eq!(over_tls.endpoint("end_session_endpoint").unwrap(), None);
        assert_eq!(over_tls.endpoint("nothing").unwrap(), None, "null is none");
        let err = over_tls.required_endpoint("introspection_endpoint").unwrap_err();
        assert!(err.to_string().ends_with("no `introspection_endpoint`"), "{err}");
        let err = over_tls.endpoint("x").unwrap_err().to_string();
        assert!(err.contains("`x` is not an http(s) URL"), "{err}");
        let plain = read("http://127.0.0.1:8080/.well-known/openid-configuration", &doc).unwrap();
        assert_eq!(
            plain.endpoint("token_endpoint").unwrap(),
            Some("http://idp.example/token")
        );
    }

    /// Another issuer's document, or no JSON object, is refused; what the
    /// error says carries no credentials.
    #[test]
    fn a_document_of_another_issuer_or_no_object_is_refused() {
        let err = read(URL, r#"{"issuer":"https://idp.example/realms/other"}"#).unwrap_err();
        assert!(err.to_string().contains("is not the configured issuer"), "{err}");
        assert!(read(URL, r#"{"jwks_uri":"https://idp.example/certs"}"#).is_err());
        for junk in ["[1]", "null", "<html>", ""] {
            let err = read(URL, junk).unwrap_err();
            assert!(err.to_string().ends_with("not a JSON object"), "{junk}: {err}");
        }
        let err = read(
            "https://svc:hunter2@idp.example/.well-known/openid-configuration",
            "{}",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
