//! What several targets share: a runtime, a fixed signing key, a strict
//! form decoder for the oracles, and a loopback issuer stub.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_core::Check;

/// A current-thread runtime for the checks that answer later.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// The answer of a check, waiting on [`runtime`] when it answers later.
pub(crate) fn wait<T>(check: Check<T>) -> T {
    match check {
        Check::Ready(t) => t,
        Check::Pending(fut) => runtime().block_on(fut),
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fixed Ed25519 key (`kid` [`KID`]): what a target's issuer signs with,
/// so that the fuzzer reaches the checks after the signature.
pub(crate) struct Signer {
    pair: Ed25519KeyPair,
    /// Its public JWK.
    pub(crate) jwk: String,
}

/// The `kid` of [`signer`]'s key.
pub(crate) const KID: &str = "fuzz";

pub(crate) fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[42; 32]).expect("a seed");
        let x = b64(pair.public_key().as_ref());
        let jwk = format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{KID}","x":"{x}"}}"#);
        Signer { pair, jwk }
    })
}

impl Signer {
    /// A compact JWS of `payload` whose header is `{"alg":"EdDSA","kid":…`
    /// followed by `extra` (more members, as the fuzzer writes them).
    pub(crate) fn sign(&self, extra: &str, payload: &str) -> String {
        let header = format!(r#"{{"alg":"EdDSA","kid":"{KID}"{extra}}}"#);
        self.sign_raw(header.as_bytes(), payload.as_bytes())
    }

    /// A compact JWS of this header and payload, as they are.
    pub(crate) fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = b64(self.pair.sign(message.as_bytes()));
        format!("{message}.{signature}")
    }

    /// Whether `token` is a JWS this key signed (the oracle's own check,
    /// not Palisade's).
    pub(crate) fn signed(&self, token: &str) -> bool {
        let Some((message, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            self.pair.public_key().as_ref(),
        )
        .verify(message.as_bytes(), &signature)
        .is_ok()
    }
}

/// The decoded JSON payload of a compact JWS, read by the oracle alone.
pub(crate) fn payload(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_, Some(p), _, None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
}

/// A form value decoded as RFC 3986 and the HTML form encoding say: `+`
/// is a space, `%` is followed by exactly two hex digits, the result is
/// UTF-8. Written apart from Palisade's decoder, to compare with it.
pub(crate) fn strict_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(*bytes.get(i + 1)?).to_digit(16)?;
                let lo = char::from(*bytes.get(i + 2)?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Every value of `name` in a query string or form body (names are
/// compared as they are, not decoded), each decoded strictly.
pub(crate) fn strict_params(query: &str, name: &str) -> Vec<Option<String>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| strict_decode(v))
        })
        .collect()
}

/// A minimal HTTP/1.1 server on loopback that answers `GET`s of fixed
/// documents, for the discovery and JWKS documents of an issuer that only
/// lives in the fuzzing process. It is asked at start-up (and when a key
/// is looked for again), never for each input.
///
/// `docs` makes the documents from the server's base URL
/// (`http://127.0.0.1:PORT`): (path, JSON body) pairs; any other path is
/// 404, and so is a `POST` (a token endpoint that refuses everything).
pub(crate) fn serve(docs: impl FnOnce(&str) -> Vec<(String, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let docs = docs(&base);
    std::thread::Builder::new()
        .name("fuzz-issuer".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let mut words = line.split(' ');
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let found = docs.iter().find(|(p, _)| p == path).filter(|_| method == "GET");
                let (status, body) = match found {
                    Some((_, body)) => ("200 OK", body.as_str()),
                    None => ("404 Not Found", r#"{"error":"not_found"}"#),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .expect("a server thread");
    base
}

/// Waits (once, at start-up) until `ready` holds, for at most 20 s.
pub(crate) fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{what} did not happen within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `text` as JSON, or `None` when it is not JSON or an object anywhere in
/// it has a member twice (which `serde_json::Value` would silently keep
/// once): the oracle compares verdicts on such text with its canonical
/// form only when the two say the same thing.
pub(crate) fn strict_json(text: &[u8]) -> Option<serde_json::Value> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Strict(serde_json::Value);
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Strict;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
                    Ok(Strict(v.into()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
                    Ok(Strict(v.into()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
                    Ok(Strict(v.into()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
                    Ok(Strict(
                        serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
                    ))
                }
                fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
                    Ok(Strict(v.into()))
                }
                fn visit_unit<E>(self) -> Result<Strict, E> {
                    Ok(Strict(serde_json::Value::Null))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
                    let mut out = Vec::new();
                    while let Some(Strict(v)) = seq.next_element()? {
                        out.push(v);
                    }
                    Ok(Strict(out.into()))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
                    let mut out = serde_json::Map::new();
                    while let Some((k, Strict(v))) = map.next_entry::<String, Strict>()? {
                        if out.insert(k, v).is_some() {
                            return Err(serde::de::Error::custom("a duplicate member"));
                        }
                    }
                    Ok(Strict(out.into()))
                }
            }
            d.deserialize_any(V)
        }
    }
    serde_json::from_slice::<Strict>(text).ok().map(|s| s.0)
}

/// Whether two JSON values are the same, numbers within a few units in the
/// last place: `serde_json` (without `float_roundtrip`) may read a float it
/// wrote back one unit off, so a canonical re-encoding can move a huge or
/// very precise number slightly.
pub(crate) fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// [`same_json`] of two identities' claims.
pub(crate) fn same_claims(a: &palisade_core::Identity, b: &palisade_core::Identity) -> bool {
    match (a.claims(), b.claims()) {
        (Some(x), Some(y)) => same_json(&x.clone().into(), &y.clone().into()),
        (x, y) => x == y,
    }
}
