//! What a call carried, to be told how the upstream answered: [`Sent`].

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "spnego")]
use std::sync::Mutex;

use crate::endpoint::DpopNonces;
#[cfg(feature = "spnego")]
use crate::kerberos::MutualAuthentication;
use crate::{ClientCredentials, ClientError, TokenExchange};

/// What [`Credentials::apply`](crate::Credentials::apply) (and
/// [`Upstreams::apply`](crate::Upstreams::apply),
/// [`Credentials::apply_request`](crate::Credentials::apply_request)) put
/// on a call, to be told the upstream's answer with
/// [`answered`](Self::answered): a cached token the upstream refuses (401,
/// or a gRPC `UNAUTHENTICATED`, its challenge naming no error but
/// `invalid_token`) is renewed at once, in the background, as Spring
/// Security's OAuth2 client replaces an authorized client an upstream
/// refuses; calls use it meanwhile, and while the issuer cannot be
/// reached, as a token due for renewal. A revoked token, or one signed with
/// a key the issuer has since retired, so costs a few refused calls, not
/// every call until it expires. A fresh token is kept: one younger than
/// 30 s or, for a token that lives less than two minutes, in its first
/// quarter; a new one would be refused alike (an audience, a clock), and
/// an upstream that refuses every token so costs the issuer one grant per
/// 30 s (four per lifetime of a short-lived token) at most.
/// [`CredentialsLayer`](crate::CredentialsLayer) does this itself. Only
/// the grants' tokens are cached: for the caller's token and nothing, the
/// answer changes nothing. A `reqwest` answer from another origin than the
/// request's ([`answered_by`](Self::answered_by), after
/// [`Credentials::apply_request`](crate::Credentials::apply_request): a
/// redirect followed elsewhere) says nothing of the token either.
///
/// A Kerberos ticket asks the upstream to prove that it is the service the
/// ticket is for (mutual authentication, RFC 4559 §5), and `answered`
/// checks the proof: a successful answer (not an HTTP 4xx or 5xx, not a
/// gRPC call's trailers-only error) must carry `WWW-Authenticate:
/// Negotiate <token>` made with the service's key, or `answered` returns
/// [`ClientError::Unproven`] and the answer must not be used; so must a
/// `reqwest` answer from another origin (a redirect followed elsewhere).
/// ([`MutualAuthentication::Optional`](crate::MutualAuthentication::Optional)
/// relaxes this for an upstream that never proves itself: an answer with
/// no token at all, or from another origin, is then used; one with a token
/// is still checked.)
/// An error answer need not prove anything: use it as a failure, never its
/// body as the upstream's word. This stops an impostor on the upstream's
/// name over plain `http`; a machine in the middle can still relay the
/// real upstream's proof and change the body: use TLS for that.
/// [`CredentialsLayer`](crate::CredentialsLayer) returns the error in
/// place of the answer. For the other credentials `answered` never fails.
///
/// `Debug` prints no token.
#[derive(Clone, Default)]
#[must_use = "tell it the upstream's answer (`answered`, `answered_by`), so that a token it refuses is renewed and a Kerberos upstream's proof of identity is checked"]
pub struct Sent {
    cached: Option<Cached>,
    /// Where a `reqwest` request carried it, when known.
    to: Option<reqwest::Url>,
    /// A DPoP proof went with it, of a call to this `htu`: the server's
    /// nonce in the answer goes in the key's next proofs to it.
    proved: Option<(Arc<DpopNonces>, String)>,
    /// A Kerberos ticket went with it: the answer must prove the service.
    #[cfg(feature = "spnego")]
    negotiated: Option<Arc<Mutex<Mutual>>>,
    /// The call is a gRPC one (`content-type: application/grpc…`), whose
    /// errors come as a trailers-only answer with HTTP status 200.
    grpc: bool,
}

/// Where the check of a Kerberos call's answer stands.
#[cfg(feature = "spnego")]
enum Mutual {
    /// Not yet told the answer; how much proof it must carry.
    Pending(palisade_spnego::Negotiation, MutualAuthentication),
    /// Told; the result, for a second telling.
    Checked(Result<(), ClientError>),
}

/// A cached token that went out, and where it is cached.
#[derive(Clone)]
enum Cached {
    Own(ClientCredentials, http::HeaderValue),
    Exchanged(TokenExchange, Arc<str>, http::HeaderValue),
}

impl Sent {
    /// The workload's own token, sent as `value`.
    pub(crate) fn own(grant: &ClientCredentials, value: &http::HeaderValue) -> Self {
        Self {
            cached: Some(Cached::Own(grant.clone(), value.clone())),
            ..Self::default()
        }
    }

    /// A token exchanged for `caller`'s, sent as `value`.
    pub(crate) fn exchanged(exchange: &TokenExchange, caller: &Arc<str>, value: &http::HeaderValue) -> Self {
        Self {
            cached: Some(Cached::Exchanged(
                exchange.clone(),
                Arc::clone(caller),
                value.clone(),
            )),
            ..Self::default()
        }
    }

    /// A Kerberos ticket sent, whose answer must complete `negotiation`
    /// (or, as `mutual` allows, may carry no proof at all).
    #[cfg(feature = "spnego")]
    pub(crate) fn negotiated(
        negotiation: palisade_spnego::Negotiation,
        mutual: MutualAuthentication,
    ) -> Self {
        Self {
            negotiated: Some(Arc::new(Mutex::new(Mutual::Pending(negotiation, mutual)))),
            ..Self::default()
        }
    }

    /// The same, with a DPoP proof of a call to `htu` made with the key
    /// whose servers' nonces are `nonces`.
    pub(crate) fn proved(mut self, nonces: &Arc<DpopNonces>, htu: &str) -> Self {
        self.proved = Some((Arc::clone(nonces), htu.to_owned()));
        self
    }

    /// The same, sent to `url` (when a cached token or a Kerberos ticket
    /// was).
    pub(crate) fn to(mut self, url: &reqwest::Url) -> Self {
        #[cfg(feature = "spnego")]
        let negotiated = self.negotiated.is_some();
        #[cfg(not(feature = "spnego"))]
        let negotiated = false;
        if self.cached.is_some() || negotiated {
            self.to = Some(url.clone());
        }
        self
    }

    /// The same, for a call whose request headers are `headers`: a gRPC
    /// call's errors are trailers-only answers.
    pub(crate) fn of_request(mut self, headers: &http::HeaderMap) -> Self {
        self.grpc = is_grpc(headers);
        self
    }

    /// Tells the credential how the upstream answered the call: its status
    /// and headers (`WWW-Authenticate`; a `DPoP-Nonce`, which the key's
    /// next proofs to that server carry).
    ///
    /// # Errors
    /// [`ClientError::Unproven`] when a Kerberos call's answer does not
    /// prove the upstream's identity (above): do not use the answer.
    pub fn answered(&self, status: http::StatusCode, headers: &http::HeaderMap) -> Result<(), ClientError> {
        if let Some((nonces, htu)) = &self.proved {
            nonces.keep(htu, headers);
        }
        #[cfg(feature = "spnego")]
        if let Some(mutual) = &self.negotiated {
            return mutual_checked(mutual, status, headers, self.grpc, false);
        }
        let Some(cached) = &self.cached else { return Ok(()) };
        if refuses_token(status, headers) {
            match cached {
                Cached::Own(grant, value) => grant.refused(value),
                Cached::Exchanged(exchange, caller, value) => exchange.refused(caller, value),
            }
        }
        Ok(())
    }

    /// [`answered`](Self::answered) with a `reqwest` response; one from
    /// another origin than the request's (a redirect followed elsewhere)
    /// says nothing of the token, and proves nothing of a Kerberos
    /// upstream (unless it is an error answer, which need not).
    ///
    /// # Errors
    /// As [`answered`](Self::answered).
    pub fn answered_by(&self, response: &reqwest::Response) -> Result<(), ClientError> {
        if self
            .to
            .as_ref()
            .is_some_and(|to| to.origin() != response.url().origin())
        {
            #[cfg(feature = "spnego")]
            if let Some(mutual) = &self.negotiated {
                return mutual_checked(mutual, response.status(), response.headers(), self.grpc, true);
            }
            return Ok(());
        }
        self.answered(response.status(), response.headers())
    }
}

/// The check of a Kerberos call's answer (once; a second telling gets the
/// first's result): a successful answer must complete the exchange; one
/// from another origin than the request's (`elsewhere`: a redirect
/// followed) cannot.
#[cfg(feature = "spnego")]
fn mutual_checked(
    mutual: &Mutex<Mutual>,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    grpc: bool,
    elsewhere: bool,
) -> Result<(), ClientError> {
    let mut mutual = mutual.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Mutual::Checked(result) = &*mutual {
        return result.clone();
    }
    // A failed call (an HTTP error, a gRPC call's error) need not prove
    // anything, and is not checked: an impostor would leave the token
    // out, and an upstream's refusal may carry a Kerberos error token.
    if failed(status, headers, grpc) {
        return Ok(());
    }
    let Mutual::Pending(negotiation, required) = std::mem::replace(&mut *mutual, Mutual::Checked(Ok(())))
    else {
        unreachable!("checked above")
    };
    let service = negotiation.service().to_owned();
    // `Ok(Some(why))`: used without proof, as `Optional` allows.
    let proven = if elsewhere {
        match required {
            MutualAuthentication::Required => Err(ClientError::Unproven(
                "the answer comes from another origin than the request's (a redirect followed), which the ticket does not prove".into(),
            )),
            MutualAuthentication::Optional => Ok(Some("it comes from another origin (a redirect followed)")),
        }
    } else {
        let challenges = headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(http::HeaderValue::as_bytes);
        match required {
            MutualAuthentication::Required => negotiation.verify(challenges).map(|()| None),
            MutualAuthentication::Optional => negotiation
                .verify_if_sent(challenges)
                .map(|sent| (!sent).then_some("it carries no mutual-authentication token")),
        }
        .map_err(|e| ClientError::Unproven(e.to_string()))
    };
    let result = proven.map(|unproven| {
        if let Some(why) = unproven {
            unproven_accepted(&service, why);
        }
    });
    *mutual = Mutual::Checked(result.clone());
    result
}

/// Says, once a minute for each upstream (the first of a minute is a
/// warning, the others debug lines), that an answer was used without the
/// upstream's proof of identity, as [`MutualAuthentication::Optional`]
/// allows.
#[cfg(feature = "spnego")]
#[cold]
fn unproven_accepted(service: &str, why: &str) {
    static SAID: palisade_core::logging::SparsePerKey = palisade_core::logging::SparsePerKey::per_minute();
    if SAID.due(service) {
        tracing::warn!(
            target: crate::LOG_TARGET,
            service,
            "a Kerberos upstream's answer is used without proof of its identity ({why}): mutual authentication is optional for it, so anyone on the path could have answered (said once a minute)"
        );
    } else {
        tracing::debug!(target: crate::LOG_TARGET, service, "a Kerberos upstream's answer is used without proof of its identity ({why})");
    }
}

/// Whether an answer is a failure: an HTTP error status, or for a gRPC
/// call (`grpc`: a gRPC client reads no body from it) a trailers-only
/// answer with a status other than `OK` (how Palisade and Envoy refuse a
/// call).
#[cfg(feature = "spnego")]
fn failed(status: http::StatusCode, headers: &http::HeaderMap, grpc: bool) -> bool {
    status.is_client_error()
        || status.is_server_error()
        || (grpc
            && status == http::StatusCode::OK
            && is_grpc(headers)
            && headers.get("grpc-status").is_some_and(|v| v != "0"))
}

/// Whether a message says it is gRPC (`content-type: application/grpc`,
/// `application/grpc+proto`, …).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.cached {
            None => "nothing cached",
            Some(Cached::Own(..)) => "the workload's token",
            Some(Cached::Exchanged(..)) => "an exchanged token",
        };
        f.debug_tuple("Sent").field(&what).finish()
    }
}

/// Whether an answer refuses the token it was sent: 401, or a gRPC
/// answer's `UNAUTHENTICATED` (HTTP 200, `grpc-status: 16` in a
/// trailers-only answer, as Palisade and Envoy refuse a call), unless a
/// challenge names another error than `invalid_token` (RFC 6750 §3.1:
/// `invalid_request` is the call's fault; RFC 9449's `use_dpop_nonce`
/// asks for a nonce, the token is fine).
fn refuses_token(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    let grpc_unauthenticated = || is_grpc(headers) && headers.get("grpc-status").is_some_and(|v| v == "16");
    (status == http::StatusCode::UNAUTHORIZED || grpc_unauthenticated())
        && headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .flat_map(|v| errors(&String::from_utf8_lossy(v.as_bytes())))
            .all(|e| e == "invalid_token")
}

/// The `error` parameters of a `WWW-Authenticate` value's challenges,
/// read past quoted strings (an `error_description` may hold commas, or
/// `error=`), a quoted one without its escapes.
fn errors(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let is_token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let spaces = |mut i: usize| {
        while b.get(i) == Some(&b' ') || b.get(i) == Some(&b'\t') {
            i += 1;
        }
        i
    };
    // The end of a quoted string that opens at `i`, past its closing quote.
    let quoted_end = |mut i: usize| {
        i += 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        (i + 1).min(b.len())
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            i = quoted_end(i);
            continue;
        }
        let start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == start {
            i += 1;
            continue;
        }
        let name = &value[start..i];
        let eq = spaces(i);
        if b.get(eq) != Some(&b'=') {
            continue;
        }
        let at = spaces(eq + 1);
        let (found_value, next) = if b.get(at) == Some(&b'"') {
            let end = quoted_end(at);
            (value.get(at + 1..end.saturating_sub(1)).unwrap_or(""), end)
        } else {
            let mut end = at;
            while end < b.len() && is_token(b[end]) {
                end += 1;
            }
            (&value[at..end], end.max(at + 1))
        };
        if name.eq_ignore_ascii_case("error") {
            found.push(found_value.replace('\\', ""));
        }
        i = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, challenges: &[&str]) -> bool {
        let mut headers = http::HeaderMap::new();
        for c in challenges {
            headers.append(http::header::WWW_AUTHENTICATE, c.parse().unwrap());
        }
        refuses_token(http::StatusCode::from_u16(status).unwrap(), &headers)
    }

    #[test]
    fn a_401_refuses_the_token_unless_its_challenge_blames_something_else() {
        assert!(answer(401, &[]));
        assert!(answer(401, &["Bearer realm=\"details\""]));
        assert!(answer(
            401,
            &["Bearer realm=\"details\", error=\"invalid_token\", error_description=\"expired\""]
        ));
        assert!(answer(401, &["Bearer error=invalid_token", "Negotiate"]));
        assert!(!answer(401, &["DPoP error=\"use_dpop_nonce\", algs=\"ES256\""]));
        assert!(!answer(401, &["Bearer error=\"invalid_request\""]));
        assert!(!answer(403, &["Bearer error=\"insufficient_scope\""]));
        assert!(!answer(200, &[]));
        assert!(!answer(500, &[]));
        // An escaped quoted value, and a description that is not ASCII.
        assert!(answer(401, &["Bearer error=\"invalid\\_token\""]));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_bytes(
                "DPoP error=\"use_dpop_nonce\", error_description=\"donn\u{e9}es\"".as_bytes(),
            )
            .unwrap(),
        );
        assert!(!refuses_token(http::StatusCode::UNAUTHORIZED, &headers));
        // gRPC's refusal: HTTP 200 with grpc-status 16.
        let grpc = |status: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
            headers.insert("grpc-status", status.parse().unwrap());
            refuses_token(http::StatusCode::OK, &headers)
        };
        assert!(grpc("16"));
        assert!(!grpc("7"), "PERMISSION_DENIED is no refusal of the token");
        assert!(!grpc("0"));
        // A description that holds `error=` or commas is not a parameter.
        assert!(answer(
            401,
            &["Bearer error_description=\"a, error=invalid_request\", error=\"invalid_token\""]
        ));
        assert!(!answer(
            401,
            &["Bearer error_description=\"say \\\"error=invalid_token\\\"\", error=\"invalid_request\""]
        ));
    }
}
