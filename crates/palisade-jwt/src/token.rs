//! Parsing a compact JWS before any key is touched: size caps, header rules,
//! duplicate claims.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::JwtError;

/// Longest `kid` accepted: it is only a lookup key.
pub(crate) const MAX_KID_LEN: usize = 256;

/// A token split and decoded, its signature not yet checked.
pub(crate) struct Parsed<'t> {
    pub(crate) jws: Jws<'t>,
    pub(crate) claims: Map<String, Value>,
}

impl fmt::Debug for Parsed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed")
            .field("alg", &self.jws.alg)
            .field("kid", &self.jws.kid)
            .finish_non_exhaustive()
    }
}

/// A compact JWS split, its header decoded and checked, its signature not
/// yet checked and its payload not decoded.
pub(crate) struct Jws<'t> {
    /// `header.payload`, the signed bytes.
    pub(crate) message: &'t str,
    /// The base64url signature.
    pub(crate) signature: &'t str,
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    pub(crate) typ: Option<String>,
    pub(crate) payload_b64: &'t str,
}

/// Splits and decodes a token, enforcing every rule that needs no key.
pub(crate) fn parse(token: &str, max_len: usize) -> Result<Parsed<'_>, JwtError> {
    let jws = parse_jws(token, max_len)?;
    if jws.payload_b64.is_empty() {
        return Err(JwtError::Malformed);
    }
    let payload_bytes = URL_SAFE_NO_PAD
        .decode(jws.payload_b64)
        .map_err(|_| JwtError::Malformed)?;
    let claims = object_without_duplicates(&payload_bytes)?;
    Ok(Parsed { jws, claims })
}

/// Splits a compact JWS and checks its header: every rule of a token
/// that needs neither a key nor the payload.
pub(crate) fn parse_jws(token: &str, max_len: usize) -> Result<Jws<'_>, JwtError> {
    if token.len() > max_len {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    if parts.next().is_some() {
        // Five parts: a JWE (encrypted token), which a resource server never accepts.
        return Err(JwtError::Encrypted);
    }
    // An empty payload is a valid JWS (RFC 7515 §7.1) but never a token:
    // `parse` refuses it.
    if h.is_empty() {
        return Err(JwtError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header = object_without_duplicates(&header_bytes)?;
    let alg = check_header(&header)?;
    if s.is_empty() {
        return Err(JwtError::Unsigned);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(Jws {
        message: &token[..h.len() + 1 + p.len()],
        signature: s,
        alg,
        kid,
        typ,
        payload_b64: p,
    })
}

/// Whether the media type `typ` (a JOSE header's `typ`) is `want`:
/// case-insensitive, `application/` optional on either side (RFC 7515
/// §4.1.9; RFC 9068 registers `application/at+jwt`, which a configured
/// `requiredType` may spell out).
pub(crate) fn typ_is(typ: &str, want: &str) -> bool {
    fn subtype(media_type: &str) -> &str {
        match media_type.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &media_type[12..],
            _ => media_type,
        }
    }
    subtype(typ).eq_ignore_ascii_case(subtype(want))
}

/// The header `typ`s of JWTs that are not access tokens: back-channel
/// logout tokens, security events, DPoP proofs (RFC 8725 §3.11).
const OTHER_HEADER_TYPES: [&str; 3] = ["logout+jwt", "secevent+jwt", "dpop+jwt"];
/// Keycloak's payload `typ`s of tokens that are not access tokens (an
/// access token's is `Bearer`, or `DPoP`): ID, refresh and logout tokens.
const OTHER_PAYLOAD_TYPES: [&str; 5] = ["ID", "Refresh", "Offline", "Logout", "Serialized-ID"];

/// `token_use` values of tokens that are not access tokens: Amazon
/// Cognito's ID tokens (`id`; its access tokens say `access`), which carry
/// the client's id in `aud` as an API's audience would be written, and
/// Ory Hydra's (fosite's) refresh and ID tokens, which Ory tells resource
/// servers to check there.
const OTHER_TOKEN_USES: [&str; 4] = ["refresh_token", "refresh", "id_token", "id"];

/// Whether the token says it is another kind of JWT than an access token:
/// its header `typ` names one (a logout token, a DPoP proof), or its
/// payload `typ` is one of Keycloak's for ID, refresh and logout tokens,
/// which it signs with the same key and header as access tokens, or its
/// `token_use` one of Cognito's or Ory's for ID and refresh tokens; or it
/// carries a back-channel logout event (a logout token whose issuer sets
/// no `typ`, as OpenID Connect Back-Channel Logout 1.0 allows).
pub(crate) fn is_other_kind(header_typ: Option<&str>, claims: &Map<String, Value>) -> bool {
    let says = |claim: &str, kinds: &[&str]| {
        claims
            .get(claim)
            .and_then(Value::as_str)
            .is_some_and(|t| kinds.iter().any(|o| t.eq_ignore_ascii_case(o)))
    };
    header_typ.is_some_and(|t| OTHER_HEADER_TYPES.iter().any(|o| typ_is(t, o)))
        || says("typ", &OTHER_PAYLOAD_TYPES)
        || says("token_use", &OTHER_TOKEN_USES)
        || claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|e| e.contains_key(BACKCHANNEL_LOGOUT_EVENT))
}

/// The event a back-channel logout token carries in `events`.
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Reads only the `iss` claim, to pick a provider. Trusted only after verification.
pub(crate) fn peek_issuer(claims: &Map<String, Value>) -> Result<&str, JwtError> {
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss),
        Some(_) => Err(JwtError::Malformed),
        None => Err(JwtError::MissingClaim("iss")),
    }
}

fn check_header(header: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    if header.contains_key("enc") {
        return Err(JwtError::Encrypted);
    }
    if header.contains_key("crit") {
        // We implement no extension, so any critical one must be refused (RFC 7515 §4.1.11).
        return Err(JwtError::CriticalHeader);
    }
    if header.contains_key("b64") {
        // RFC 7797 unencoded payloads are never what an access token is.
        return Err(JwtError::CriticalHeader);
    }
    if let Some(cty) = header.get("cty") {
        let Value::String(cty) = cty else {
            return Err(JwtError::Malformed);
        };
        if cty.eq_ignore_ascii_case("jwt") || cty.eq_ignore_ascii_case("application/jwt") {
            return Err(JwtError::Nested);
        }
    }
    // `jku`, `x5u`, `jwk` and `x5c` are ignored: keys only ever come from the
    // provider's configured JWKS, never from the token.
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(JwtError::Malformed);
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::Unsigned);
    }
    alg.parse::<Algorithm>()
        .map_err(|_| JwtError::AlgorithmNotAllowed)
}

/// Parses a JSON object, refusing a duplicate member name at any depth
/// (`serde_json::Value` would silently keep the last one), in one pass.
pub(crate) fn object_without_duplicates(bytes: &[u8]) -> Result<Map<String, Value>, JwtError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE) {
            JwtError::DuplicateClaim
        } else {
            JwtError::Malformed
        }
    })?;
    de.end().map_err(|_| JwtError::Malformed)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

const DUPLICATE: &str = "duplicate member";

/// Builds a `serde_json::Value`, failing on a duplicate member name.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let value = access.next_value_seed(StrictValue)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A `typ` and a configured `requiredType` are media types, each with
    /// `application/` or without it, in any case.
    #[test]
    fn a_typ_matches_the_media_type_however_either_side_spells_it() {
        for (typ, want) in [
            ("at+jwt", "at+jwt"),
            ("application/at+jwt", "at+jwt"),
            ("at+jwt", "application/at+jwt"),
            ("Application/AT+JWT", "application/at+jwt"),
        ] {
            assert!(typ_is(typ, want), "{typ} is {want}");
        }
        for (typ, want) in [
            ("JWT", "at+jwt"),
            ("application/jwt", "application/at+jwt"),
            ("", "at+jwt"),
        ] {
            assert!(!typ_is(typ, want), "{typ} is not {want}");
        }
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn duplicate_claims_are_rejected() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"role":"admin","role":"user"}"#);
        assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::DuplicateClaim);
    }

    #[test]
    fn nested_duplicate_claims_are_rejected() {
        let t = token(
            r#"{"alg":"RS256"}"#,
            r#"{"realm_access":{"roles":[],"roles":["admin"]}}"#,
        );
        assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::DuplicateClaim);
    }

    #[test]
    fn alg_none_in_any_spelling_is_rejected() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"iss":"x"}"#);
            assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::Unsigned, "{alg}");
        }
    }

    #[test]
    fn empty_signature_is_rejected() {
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::Unsigned);
    }

    #[test]
    fn crit_b64_cty_and_jwe_are_rejected() {
        let cases = [
            (
                r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
                JwtError::CriticalHeader,
            ),
            (r#"{"alg":"RS256","b64":false}"#, JwtError::CriticalHeader),
            (r#"{"alg":"RS256","cty":"JWT"}"#, JwtError::Nested),
            (r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#, JwtError::Encrypted),
            (r#"{"alg":"HS999"}"#, JwtError::AlgorithmNotAllowed),
        ];
        for (h, want) in cases {
            assert_eq!(parse(&token(h, "{}"), 8192).unwrap_err(), want, "{h}");
        }
        assert_eq!(parse("a.b.c.d.e", 8192).unwrap_err(), JwtError::Encrypted);
    }

    #[test]
    fn oversized_tokens_are_rejected_before_parsing() {
        let t = "a".repeat(9000);
        assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::TooLarge);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for t in [
            "",
            ".",
            "..",
            "a.b",
            "%%%.%%%.%%%",
            "e30.e30",
            "W10.e30.c2ln",
            "e30.W10.c2ln",
        ] {
            assert_eq!(parse(t, 8192).unwrap_err(), JwtError::Malformed, "{t}");
        }
    }

    #[test]
    fn mutated_tokens_never_panic() {
        // A deterministic mutation fuzz: flip, insert and delete bytes of a
        // well-formed token; every outcome must be a value, never a panic.
        let good = token(
            r#"{"alg":"RS256","kid":"k"}"#,
            r#"{"iss":"i","aud":["a"],"n":{"x":[1,2,{"y":null}]}}"#,
        );
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"eyJ0.-_=+/AZaz09{}\"\\ \x00\xff";
        for _ in 0..20_000 {
            let mut bytes = good.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let pos = usize::try_from(next()).unwrap_or(0) % bytes.len().max(1);
                let c = alphabet[usize::try_from(next()).unwrap_or(0) % alphabet.len()];
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[pos] = c,
                    1 => bytes.insert(pos, c),
                    _ if !bytes.is_empty() => {
                        bytes.remove(pos);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text, 8192).map(|p| peek_issuer(&p.claims).map(str::len));
        }
    }

    #[test]
    fn long_kid_is_rejected() {
        let t = token(&format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(300)), "{}");
        assert_eq!(parse(&t, 8192).unwrap_err(), JwtError::Malformed);
    }

    #[test]
    fn well_formed_token_parses() {
        let t = token(
            r#"{"alg":"ES256","kid":"k1","typ":"at+jwt","jku":"https://evil"}"#,
            r#"{"iss":"i","n":[1,{"a":2}]}"#,
        );
        let p = parse(&t, 8192).unwrap();
        assert_eq!(p.jws.alg, Algorithm::ES256);
        assert_eq!(p.jws.kid.as_deref(), Some("k1"));
        assert_eq!(p.jws.typ.as_deref(), Some("at+jwt"));
        assert_eq!(peek_issuer(&p.claims).unwrap(), "i");
    }
}
