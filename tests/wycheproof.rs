//! Every Wycheproof JWS, JWK and JWE test vector (C2SP/wycheproof,
//! `testvectors_v1`, copied under `tests/vectors/wycheproof/`) through the
//! public API.
//!
//! A vector's key (or key set) is configured the way an application
//! would: asymmetric keys as an inline JWKS (`jwks_inline`), a lone
//! symmetric key as the issuer's HMAC secret with its `kid`
//! (`dangerous().hmac_secret_with_kid`) and its algorithm. Its JWS goes
//! through [`JwtAuthenticator::verify_jws`], which checks everything but
//! claims (Wycheproof's payloads are not access tokens), and through
//! [`JwtAuthenticator::verify`], which must refuse it either way.
//!
//! An `invalid` vector must be refused; a `valid` one accepted, unless it
//! is one of the deliberate refusals of the table in `docs/security.md`,
//! which says how it is refused. The two `invalid` vectors that are copies
//! of a valid one are accepted, as a second table there says. The tables
//! are read here, so they cannot drift from what the code does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use palisade::jwt::{Algorithm, JwtAuthenticator, JwtError, Provider};
use serde_json::{Value, json};

const ISSUER: &str = "https://wycheproof.example";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/wycheproof");
const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md");
const JWS: &str = "json_web_signature_test.json";
const JWK: &str = "json_web_key_test.json";
const JWE: &str = "json_web_encryption_test.json";

/// What Palisade did with a vector: `accepted`, or the name of what
/// refused it (a [`JwtError`] variant, or `config` when the key or key set
/// could not be configured at all).
type Outcome = String;

const ACCEPTED: &str = "accepted";

fn variant(e: &impl Debug) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or_default().to_owned()
}

fn load(file: &str) -> Value {
    let path = format!("{VECTORS}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keys of a group: its public key or key set if it has one, else its
/// private one.
fn keys_of(group: &Value) -> Vec<Value> {
    let set = group
        .get("public")
        .or_else(|| group.get("private"))
        .expect("a key");
    match set.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        _ => vec![set.clone()],
    }
}

/// The authenticator an application would build for these keys, or why
/// it cannot be built.
fn authenticator(keys: &[Value]) -> Result<JwtAuthenticator, String> {
    let provider = Provider::builder(ISSUER).audience("wycheproof");
    let symmetric = keys.iter().all(|k| k["kty"] == "oct");
    let provider = if symmetric {
        // One secret per issuer: a set of several symmetric keys has no
        // configuration.
        let [key] = keys else {
            return Err("config".into());
        };
        let secret = base64_url(key["k"].as_str().unwrap_or_default())?;
        let builder = provider.dangerous();
        let builder = match key["kid"].as_str() {
            Some(kid) => builder.hmac_secret_with_kid(kid, secret),
            None => builder.hmac_secret(secret),
        };
        match key["alg"].as_str() {
            None => builder,
            // An `oct` key for anything but an HMAC JWS algorithm (an AES
            // key) is not a signing secret.
            Some(alg) => match alg.parse::<Algorithm>() {
                Ok(a @ (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) => builder.algorithms([a]),
                _ => return Err("config".into()),
            },
        }
    } else {
        provider.jwks_inline(json!({ "keys": keys }).to_string())
    };
    let provider = provider.build().map_err(|_| "config".to_owned())?;
    JwtAuthenticator::builder()
        .provider(provider)
        .build()
        .map_err(|_| "config".to_owned())
}

fn base64_url(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "config".to_owned())
}

/// A vector's identity and verdict.
struct Vector {
    file: &'static str,
    tc_id: u64,
    comment: String,
    valid: bool,
    /// The JWS or JWE.
    token: String,
    outcome: Outcome,
}

/// Runs every JWS of a signature or key file.
async fn run_signatures(file: &'static str, out: &mut Vec<Vector>) {
    let doc = load(file);
    let mut count = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let jwt = authenticator(&keys_of(group));
        for test in group["tests"].as_array().unwrap() {
            count += 1;
            let jws = test["jws"].as_str().unwrap();
            let outcome = match &jwt {
                Err(why) => why.clone(),
                Ok(jwt) => {
                    // Whatever `verify_jws` says, none of these is an access token.
                    let as_token = jwt.verify(jws).await;
                    assert!(
                        as_token.is_err(),
                        "{file} tcId {}: taken for a token",
                        test["tcId"]
                    );
                    match jwt.verify_jws(ISSUER, jws).await {
                        Ok(_) => ACCEPTED.to_owned(),
                        Err(e) => variant(&e),
                    }
                }
            };
            out.push(vector(file, test, jws, outcome));
        }
    }
    assert_eq!(Some(count), doc["numberOfTests"].as_u64(), "{file}: vectors read");
}

/// Runs every JWE: a resource server never decrypts, so each is refused,
/// as a bearer token and as a JWS.
async fn run_encryptions(out: &mut Vec<Vector>) {
    let doc = load(JWE);
    // Any issuer will do: an encrypted token is refused before its key is
    // looked for.
    let signing = load(JWS);
    let rs256 = keys_of(&signing["testGroups"][2]);
    let jwt = authenticator(&rs256).unwrap();
    let mut count = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        for test in group["tests"].as_array().unwrap() {
            count += 1;
            let jwe = test["jwe"].as_str().unwrap();
            // A well-formed JWE is refused for being one; a broken one
            // (a part missing, JSON serialization) may be refused earlier.
            let as_token = jwt.verify(jwe).await;
            let encrypted = matches!(as_token, Err(JwtError::Encrypted));
            assert!(
                encrypted || (test["result"] == "invalid" && as_token.is_err()),
                "{JWE} tcId {}: {as_token:?}",
                test["tcId"]
            );
            let outcome = match jwt.verify_jws(ISSUER, jwe).await {
                Ok(_) => ACCEPTED.to_owned(),
                Err(e) => variant(&e),
            };
            out.push(vector(JWE, test, jwe, outcome));
        }
    }
    assert_eq!(Some(count), doc["numberOfTests"].as_u64(), "{JWE}: vectors read");
}

fn vector(file: &'static str, test: &Value, token: &str, outcome: Outcome) -> Vector {
    let result = test["result"].as_str().unwrap();
    assert!(matches!(result, "valid" | "invalid"), "{file}: result {result}");
    Vector {
        file,
        tc_id: test["tcId"].as_u64().unwrap(),
        comment: test["comment"].as_str().unwrap_or_default().to_owned(),
        valid: result == "valid",
        token: token.to_owned(),
        outcome,
    }
}

/// A row of a table of `docs/security.md`, for one vector.
struct Row {
    /// The third column: how the vector is refused, or the valid vector
    /// it is a copy of.
    what: String,
    reason: String,
}

/// Reads the table between the `<!-- {name}:start -->` and `end` markers
/// of `docs/security.md`: `| file | tcIds | what | reason |`, tcIds a
/// comma-separated list of numbers and ranges (`3–7`), one entry a vector.
fn table(name: &str) -> BTreeMap<(String, u64), Row> {
    let doc = std::fs::read_to_string(TABLE).unwrap();
    let start = doc.find(&format!("<!-- {name}:start -->")).expect("start marker");
    let end = doc.find(&format!("<!-- {name}:end -->")).expect("end marker");
    let mut table = BTreeMap::new();
    let mut rows = 0;
    for line in doc[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        let [file, ids, what, reason] = cells[..] else {
            panic!("{name} row `{line}`: four cells expected");
        };
        if file == "file" || file.starts_with('-') {
            continue;
        }
        assert!(
            [JWS, JWK, JWE].contains(&file),
            "{name} row `{line}`: unknown file"
        );
        assert!(!reason.is_empty(), "{name} row `{line}`: no reason");
        rows += 1;
        for part in ids.split(',') {
            let part = part.trim();
            let (from, to) = part.split_once(['–', '-']).unwrap_or((part, part));
            let (from, to): (u64, u64) = (from.trim().parse().unwrap(), to.trim().parse().unwrap());
            assert!(from <= to, "{name} row `{line}`: range {part}");
            for id in from..=to {
                let row = Row {
                    what: what.to_owned(),
                    reason: reason.to_owned(),
                };
                let old = table.insert((file.to_owned(), id), row);
                assert!(old.is_none(), "{file} tcId {id} is in {name} twice");
            }
        }
    }
    assert!(rows > 0, "{name} has no rows");
    table
}

#[tokio::test]
async fn every_wycheproof_vector_is_accepted_or_refused_as_documented() {
    let mut vectors = Vec::new();
    run_signatures(JWS, &mut vectors).await;
    run_signatures(JWK, &mut vectors).await;
    run_encryptions(&mut vectors).await;
    assert_eq!(vectors.len(), 401 + 26 + 139);

    let refusals = table("wycheproof-refusals");
    let defective = table("wycheproof-defective");
    let find = |file: &str, id: u64| vectors.iter().find(|v| v.file == file && v.tc_id == id);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for v in &vectors {
        let key = (v.file.to_owned(), v.tc_id);
        seen.insert(key.clone());
        let expected = match (v.valid, refusals.get(&key), defective.get(&key)) {
            (_, Some(_), Some(_)) => {
                wrong.push(format!("{} tcId {}: in both tables", v.file, v.tc_id));
                continue;
            }
            (true, None, None) => ACCEPTED,
            (true, Some(r), None) => r.what.as_str(),
            (false, None, None) if v.outcome != ACCEPTED => continue,
            (false, None, None) => "refused",
            (false, Some(r), None) => {
                wrong.push(format!(
                    "{} tcId {} ({}): invalid, so not a deliberate refusal ({})",
                    v.file, v.tc_id, v.comment, r.reason
                ));
                continue;
            }
            (valid, None, Some(d)) => {
                // Accepted only as the valid vector it is a copy of.
                let same = d.what.parse().ok().and_then(|id| find(v.file, id));
                if valid || !same.is_some_and(|o| o.valid && o.token == v.token) {
                    wrong.push(format!(
                        "{} tcId {} ({}): not an invalid copy of valid tcId {}",
                        v.file, v.tc_id, v.comment, d.what
                    ));
                    continue;
                }
                ACCEPTED
            }
        };
        if v.outcome != expected {
            wrong.push(format!(
                "{} tcId {} ({}, {}): expected {expected}, got {}",
                v.file,
                v.tc_id,
                v.comment,
                if v.valid { "valid" } else { "invalid" },
                v.outcome
            ));
        }
    }
    for (file, id) in refusals.keys().chain(defective.keys()) {
        if !seen.contains(&(file.clone(), *id)) {
            wrong.push(format!("{file} tcId {id}: in the table, not a vector"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The harness configures every family right: each algorithm of the
    // vectors that Palisade supports verifies some vector.
    let accepted: BTreeSet<String> = vectors
        .iter()
        .filter(|v| v.outcome == ACCEPTED)
        .map(|v| {
            let header = v.token.split('.').next().unwrap();
            let header: Value = serde_json::from_slice(&base64_url(header).unwrap()).unwrap();
            header["alg"].as_str().unwrap().to_owned()
        })
        .collect();
    let supported = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    ];
    assert_eq!(
        accepted,
        supported.map(str::to_owned).into(),
        "algorithms accepted"
    );
}

#[tokio::test]
async fn the_roca_and_short_keys_of_the_jwk_vectors_are_skipped_at_load() {
    let doc = load(JWK);
    let group = |comment: &str| {
        doc["testGroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["comment"] == comment)
            .unwrap()
            .clone()
    };
    // A usable key (tcId 5's, which verifies its vector) beside the weak one.
    let rs256 = group("rs256");
    let (good, good_jws) = (keys_of(&rs256), rs256["tests"][0]["jws"].as_str().unwrap());
    for comment in ["jws_rsa_roca_key", "keysize_too_small"] {
        let weak = group(comment);
        let jws = weak["tests"][0]["jws"].as_str().unwrap();
        // Alone, the weak key leaves no usable key: building fails.
        assert_eq!(authenticator(&keys_of(&weak)).err().as_deref(), Some("config"));
        // Beside a good key it is skipped, and what it signed is refused
        // as signed by an unknown key.
        let mut keys = keys_of(&weak);
        keys.extend(good.iter().cloned());
        let jwt = authenticator(&keys).unwrap();
        let refused = jwt.verify_jws(ISSUER, jws).await;
        assert!(
            matches!(refused, Err(JwtError::UnknownKey)),
            "{comment}: {refused:?}"
        );
        assert!(jwt.verify_jws(ISSUER, good_jws).await.is_ok(), "{comment}");
    }
}
