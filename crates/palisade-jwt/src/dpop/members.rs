//! The members of a proof's header, `jwk` and claims that the checks read,
//! taken in one pass over the JSON: strings borrowed where they hold no
//! escape, every other member skipped without building anything. A member
//! the checks read that appears twice makes the proof malformed (RFC 7515
//! §4: refuse, or keep only the last; an ignored member cannot change what
//! is checked either way).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A member's value, as much of it as a check needs.
#[derive(Debug)]
pub(super) enum Member<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// An object, array, boolean or null.
    Other,
}

impl Member<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A member that is only looked for: present, whatever its value (`null`
/// included).
#[derive(Debug, Default)]
pub(super) struct Present(pub(super) bool);

/// The protected header.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Header<'a> {
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) typ: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) alg: Option<Member<'a>>,
    #[serde(default)]
    pub(super) crit: Present,
    #[serde(default)]
    pub(super) b64: Present,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) jwk: Option<JwkMember<'a>>,
}

/// The header's `jwk`, when it is an object.
#[derive(Debug)]
pub(super) enum JwkMember<'a> {
    Object(Jwk<'a>),
    Other,
}

/// A JWK: the members a public key of a supported type has, and those that
/// only a private or symmetric key has (RFC 7518 §6.3.2, §6.4, §6.2.2).
#[derive(Debug, serde::Deserialize)]
pub(super) struct Jwk<'a> {
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) kty: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) alg: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) crv: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) x: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) y: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) n: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) e: Option<Member<'a>>,
    #[serde(default)]
    d: Present,
    #[serde(default)]
    p: Present,
    #[serde(default)]
    q: Present,
    #[serde(default)]
    dp: Present,
    #[serde(default)]
    dq: Present,
    #[serde(default)]
    qi: Present,
    #[serde(default)]
    oth: Present,
    #[serde(default)]
    k: Present,
}

impl Jwk<'_> {
    /// Whether it holds a private or symmetric key's member.
    pub(super) fn has_private_member(&self) -> bool {
        [
            &self.d, &self.p, &self.q, &self.dp, &self.dq, &self.qi, &self.oth, &self.k,
        ]
        .iter()
        .any(|m| m.0)
    }

    /// The string value of a required member (`kty`, `crv`, `x`, `y`, `n`, `e`).
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        let member = match name {
            "kty" => &self.kty,
            "crv" => &self.crv,
            "x" => &self.x,
            "y" => &self.y,
            "n" => &self.n,
            "e" => &self.e,
            _ => return None,
        };
        member.as_ref().and_then(Member::as_str)
    }
}

/// The claims.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Claims<'a> {
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) jti: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) htm: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) htu: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) iat: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) ath: Option<Member<'a>>,
    #[serde(borrow, default, deserialize_with = "some")]
    pub(super) nonce: Option<Member<'a>>,
}

/// A member that is there, `null` included (which `Option` would take for
/// an absent one).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Parses one JSON object, nothing after it (a struct would also take an
/// array, member by member: not here).
pub(super) fn parse<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = T::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

impl<'de: 'a, 'a> Deserialize<'de> for Member<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Member::Str(Cow::Owned(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Member::Num(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Member::Num(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(v).map_or(Member::Other, Member::Num))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }
}

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JwkMember<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JwkVisitor)
    }
}

struct JwkVisitor;

impl<'de> Visitor<'de> for JwkVisitor {
    type Value = JwkMember<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Jwk::deserialize(de::value::MapAccessDeserializer::new(map)).map(JwkMember::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JwkMember::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(JwkMember::Other)
    }
}
