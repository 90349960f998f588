//! `application/x-www-form-urlencoded` values, as OAuth token requests,
//! back-channel logout bodies and query strings carry them: one encoding
//! for every crate that speaks to an issuer.
//!
//! ```
//! use palisade_core::form;
//! assert_eq!(form::encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
//! assert_eq!(form::decode("a+b%26c%3D%C3%A9").as_deref(), Some("a b&c=é"));
//! assert_eq!(form::param("x=1&state=a%2Fb&x=2", "state").as_deref(), Some("a/b"));
//! assert_eq!(form::decode("%zz"), None);
//! ```

/// Percent-encodes every byte but RFC 3986's unreserved characters: a
/// value for a form body or a query, and the parts of HTTP Basic client
/// credentials (RFC 6749 section 2.3.1).
#[must_use]
pub fn encode(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes one value (`+` is a space); `None` when an escape is malformed
/// or the result is not UTF-8.
#[must_use]
pub fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits: `from_str_radix` alone would take `%+F`.
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The first value of `name` in a query string or form body, decoded.
#[must_use]
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_escapes_are_refused() {
        let v = "a b&c=d/é%";
        assert_eq!(decode(&encode(v)).as_deref(), Some(v));
        assert_eq!(decode("a+b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn an_escape_is_two_hex_digits_not_a_signed_number() {
        for bad in ["%+F", "%+0", "%-1", "% F", "a%+fb"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(param("return_to=%+F", "return_to"), None);
        assert_eq!(decode("%2F%2f").as_deref(), Some("//"));
    }
}
