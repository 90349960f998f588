//! Path normalisation before matching, as Istio's `MERGE_SLASHES` option
//! does (its default, `BASE`, keeps runs of `/`), so that `/admin/../x`,
//! `//admin` and `/%61dmin` cannot slip past a rule.
//!
//! The steps, in order (RFC 3986 §6.2.2 plus Istio's `MERGE_SLASHES`):
//! 1. percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded; other escapes are kept, their hex digits upper-cased; a `%` not
//!    followed by two hex digits makes the request malformed (400); bytes a
//!    URI holds only escaped but clients send raw (non-ASCII, `"`, `{`, `|`)
//!    are escaped, so `/café` and `/caf%C3%A9`, which one route serves, meet
//!    one rule;
//! 2. runs of `/` are merged into one;
//! 3. `.` and `..` segments are resolved (`..` never climbs above `/`).
//!
//! `%2F` (`/`), `%5C` (`\`) and a raw `\` are refused with 400 by default
//! ([`EscapedSlashes::Reject`], as Spring Security's firewall and Apache
//! httpd's `AllowEncodedSlashes Off` do): routers match them as ordinary
//! characters, but a wildcard capture (axum's `{*path}`, actix-web's
//! `{tail:.*}`) decodes them, so a handler of `/files/{*path}` would be
//! given `private/key` for `/files/private%2Fkey`, which a `DENY` on
//! `/files/private/*` did not see. [`EscapedSlashes::Keep`] keeps them as
//! they are, as Istio does by default.
//!
//! The adapters hand the normalised path to the router (the request's URI is
//! rewritten), so the path a rule matched is the path that is routed; bytes
//! a URI holds only escaped are handed on as the client sent them, raw or
//! escaped, which the router reads alike but for axum's literal routes.

use std::borrow::Cow;

/// What to do with `%2F`, `%5C` and `\` in a path (`escapedSlashes` of
/// `AuthorizationSettings`: `REJECT`, the default, or `KEEP`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum EscapedSlashes {
    /// Keep them: ordinary characters of a segment, as Istio keeps them. A
    /// relaxation: a route's wildcard capture decodes them into segments
    /// that path rules did not see (warned of when a file sets it).
    Keep,
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
}

/// Why a path cannot be normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    BadEscape,
    EscapedSlash,
    /// Neither `/…`, `*` (`OPTIONS *`) nor empty (`CONNECT`'s authority
    /// form): an HTTP/2 `:path` such as `admin/x`, which h2 and hyper pass
    /// on, and a router's fallback (a file server) may still serve.
    NotAbsolute,
}

impl PathError {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::EscapedSlash => "the request path has an encoded slash or a backslash",
            PathError::NotAbsolute => "the request path does not begin with `/`",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether an escape of `b` is decoded: the characters a path segment
/// holds raw (RFC 3986's `pchar`: unreserved, sub-delims, `:` and `@`).
/// Envoy decodes only unreserved ones; a router that decodes more before
/// matching (actix-web decodes every escape but `%`, `/` and `+`) would
/// route `/items/7%3Adelete` to `/items/{id}:delete` while a `DENY` on
/// `*:delete` saw `%3A`, and captures decode them all (axum's `%2B` too:
/// `/items/a%2Bb` is `a+b` to a handler of `/items/{id}`). Escapes of other
/// bytes (space, non-ASCII, `?`, `#`, `%`) stay, upper-cased.
fn is_decoded(b: u8) -> bool {
    is_unreserved(b) || is_segment_delim(b)
}

/// Whether a raw byte of a path is matched escaped (`%XX`, upper-case): a
/// byte RFC 3986 allows in a path only escaped. The `http` crate lets some
/// through raw (non-ASCII UTF-8 in axum's, `"` `[` `\` `]` `^` `{` `|` `}`
/// in both frameworks'), and routers read them as their escapes
/// (actix-web decodes escapes before matching, captures decode them), so
/// `/files/privé/x` and `/files/priv%C3%A9/x` reach one handler, and a
/// rule written with either form must see both. Space, controls, `<`, `>`
/// and `` ` ``, which it refuses raw, are escaped too, for a request made
/// in code. A raw `\` is refused before, unless `escapedSlashes: KEEP`.
const fn is_escaped_raw(b: u8) -> bool {
    b >= 0x7F
        || b <= b' '
        || matches!(
            b,
            b'"' | b'<' | b'>' | b'[' | b'\\' | b']' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// The upper-case hex digits of a byte's escape.
fn escape_digits(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]
}

/// The characters [`is_decoded`] decodes beyond unreserved ones. Their
/// decoding alone does not make the router need the normalised path
/// ([`needs_rewrite`]): actix-web decodes them itself before routing (but
/// `+`, which a route then matches escaped), and captures (the only way
/// axum's routes meet them) decode them too.
fn is_segment_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

/// Whether the router must be handed `normalized` rather than `raw`: it
/// differs by more than escapes of [`is_segment_delim`] characters decoded
/// and raw bytes escaped ([`is_escaped_raw`]; a router reads `é` and
/// `%C3%A9` alike, and axum's literal routes match only the raw form), such
/// as a merged slash, a dot segment, an unreserved character decoded, an
/// escape upper-cased. A layer that runs after routing can take the rest
/// as it is, and so no request of an email address (`%40`) in its path is
/// refused there.
pub(crate) fn needs_rewrite(raw: &str, normalized: &str) -> bool {
    let (raw, norm) = (raw.as_bytes(), normalized.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < raw.len() && j < norm.len() {
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
            && is_segment_delim(h * 16 + l)
            && norm[j] == h * 16 + l
        {
            i += 3;
            j += 1;
            continue;
        }
        if is_escaped_raw(raw[i])
            && norm[j] == b'%'
            && norm.get(j + 1..j + 3) == Some(&escape_digits(raw[i])[..])
        {
            i += 1;
            j += 3;
            continue;
        }
        if raw[i] != norm[j] {
            return true;
        }
        i += 1;
        j += 1;
    }
    i != raw.len() || j != norm.len()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The bytes that cannot start a form to normalise: most of a path's
/// (letters, digits, `-`, `_`, `~`, `:`, `@`...), one load each.
const QUIET: [bool; 256] = {
    let mut quiet = [false; 256];
    let mut b = 0;
    while b < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "b < 256")]
        let byte = b as u8;
        quiet[b] = !is_escaped_raw(byte) && !matches!(byte, b'%' | b'/' | b'.' | b'\\');
        b += 1;
    }
    quiet
};

/// Whether the path can be used as it is (the common case: one scan, one
/// table load per byte). A `\` is never (escaped, or refused with
/// [`EscapedSlashes::Reject`]), whatever the setting.
fn is_normal(path: &[u8]) -> bool {
    for (i, &b) in path.iter().enumerate() {
        if QUIET[usize::from(b)] {
            continue;
        }
        let after_slash = i > 0 && path[i - 1] == b'/';
        match b {
            b'%' => return false,
            b if is_escaped_raw(b) => return false,
            b'/' if after_slash => return false,
            b'.' if after_slash => {
                // `/.` or `/..` followed by `/` or the end.
                let rest = &path[i..];
                if rest == b"." || rest == b".." || rest.starts_with(b"./") || rest.starts_with(b"../") {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Why an escape of `pattern` can never match a normalised request path,
/// if one cannot: a `%` not followed by two hex digits (a request with one
/// is refused as malformed), or `%2A`, which normalisation decodes to `*`
/// (a pattern's wildcard, so no pattern can name it).
pub(crate) fn unmatchable_escape(pattern: &str) -> Option<&'static str> {
    let bytes = pattern.as_bytes();
    bytes.iter().enumerate().filter(|(_, b)| **b == b'%').find_map(|(i, _)| {
        match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (Some(h), Some(l)) if h * 16 + l == b'*' => Some(
                "matches no request: `%2A` is matched as `*`, which a pattern reads as its wildcard; match around it (a prefix or suffix)",
            ),
            (Some(_), Some(_)) => None,
            _ => Some("matches no request: a `%` without two hex digits (a request with one is refused as malformed)"),
        }
    })
}

/// A path pattern's escapes as a request path's are once normalised
/// ([`normalize`]'s first step, [`decode_escapes`]): escapes of the
/// characters it decodes decoded, the others' hex digits upper-cased, raw
/// bytes a URI holds only escaped escaped. A policy written for Envoy,
/// which keeps `%40`, then matches as meant: `/users/admin%40corp.example`
/// matches the request `/users/admin%40corp.example`, which is matched as
/// `/users/admin@corp.example`; and `/files/privé/*` matches
/// `/files/priv%C3%A9/x` as well as `/files/privé/x`. The segments `{*}`
/// and `{**}` (templates) are left as they are, and so is a pattern with
/// an escape no request has ([`unmatchable_escape`], refused before it is
/// compiled).
pub(crate) fn pattern_escapes(pattern: &str) -> Cow<'_, str> {
    if !pattern.bytes().any(|b| b == b'%' || is_escaped_raw(b)) || unmatchable_escape(pattern).is_some() {
        return Cow::Borrowed(pattern);
    }
    let mut out = String::with_capacity(pattern.len() + 8);
    for (i, segment) in pattern.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match segment {
            "{*}" | "{**}" => out.push_str(segment),
            s => match decode_escapes(s, EscapedSlashes::Keep, Raw::Escaped) {
                Ok(d) => out.push_str(&d),
                Err(_) => return Cow::Borrowed(pattern),
            },
        }
    }
    Cow::Owned(out)
}

/// What [`decode_escapes`] does with a raw byte of [`is_escaped_raw`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Escapes it: the form rules match.
    Escaped,
    /// Keeps it as sent: the form a router is handed ([`router_form`]).
    Kept,
}

/// Step 1 of [`normalize`]: escapes of the characters [`is_decoded`]
/// decodes decoded, the others' hex digits upper-cased, raw bytes of
/// [`is_escaped_raw`] escaped; a `%` without two hex digits is
/// [`PathError::BadEscape`], and with
/// [`EscapedSlashes::Reject`] a `%2F`, a `%5C` or a raw `\` is
/// [`PathError::EscapedSlash`].
fn decode_escapes(path: &str, escaped: EscapedSlashes, raw: Raw) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if is_decoded(v) {
                decoded.push(char::from(v));
            } else {
                if escaped == EscapedSlashes::Reject && matches!(v, b'/' | b'\\') {
                    return Err(PathError::EscapedSlash);
                }
                decoded.push('%');
                decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if is_escaped_raw(b) {
            if b == b'\\' && escaped == EscapedSlashes::Reject {
                return Err(PathError::EscapedSlash);
            }
            if raw == Raw::Kept {
                // A whole UTF-8 sequence at once (the path is a `str`): the
                // run ends at an ASCII byte, a `\\` included (refused above
                // with `Reject`).
                let end = bytes[i + 1..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'\\' || !is_escaped_raw(c))
                    .map_or(bytes.len(), |p| i + 1 + p);
                decoded.push_str(&path[i..end]);
                i = end;
                continue;
            }
            decoded.push('%');
            decoded.extend(escape_digits(b).map(char::from));
            i += 1;
            continue;
        }
        // Copy the whole run of plain ASCII up to the next `%` or byte to
        // escape at once.
        let end = bytes[i..]
            .iter()
            .position(|&c| c == b'%' || is_escaped_raw(c))
            .map_or(bytes.len(), |p| i + p);
        decoded.push_str(&path[i..end]);
        i = end;
    }
    Ok(decoded)
}

/// Whether `path` is a request path a server may hand on: `/…`, or the
/// other forms RFC 9112 §3.2 and RFC 9113 §8.3.1 allow, `*` (`OPTIONS *`)
/// and empty (`CONNECT`'s authority). An HTTP/2 `:path` such as `admin/x`,
/// which h2 and hyper pass on, is none.
#[inline]
pub(crate) fn is_request_path(path: &str) -> bool {
    path.starts_with('/') || path == "*" || path.is_empty()
}

/// Normalises a request path (without its query).
pub(crate) fn normalize(path: &str, escaped: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") {
        return if is_request_path(path) {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(resolve(&decode_escapes(path, escaped, Raw::Escaped)?)))
}

/// The normalised path a router is handed when [`needs_rewrite`] says it
/// must be: [`normalize`]'s steps, but bytes a URI holds only escaped are
/// kept as the client sent them, raw or escaped, as the router would have
/// read them. axum's literal routes match only the raw form: `/x/../café`
/// reaches the route `/café`, which its matching form `/caf%C3%A9` would
/// not.
pub(crate) fn router_form(path: &str, escaped: EscapedSlashes) -> Result<String, PathError> {
    Ok(resolve(&decode_escapes(path, escaped, Raw::Kept)?))
}

/// Steps 2 and 3 of [`normalize`] on a decoded path.
fn resolve(decoded: &str) -> String {
    // 2 and 3. Merge slashes, resolve dot segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || trailing {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p, EscapedSlashes::Keep).unwrap().into_owned()
    }

    #[test]
    fn a_patterns_escapes_are_those_of_a_normalised_path() {
        for (pattern, as_matched) in [
            ("/users/admin%40corp.example", "/users/admin@corp.example"),
            ("*%3adelete", "*:delete"),
            ("/%61dmin/*", "/admin/*"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%e2%82%ac", "/a%E2%82%AC"),
            ("/plain/{*}", "/plain/{*}"),
        ] {
            assert_eq!(pattern_escapes(pattern), as_matched, "{pattern}");
        }
        // A request path and a pattern written alike are matched alike.
        for p in ["/users/admin%40corp.example", "/a%3A%3a/b", "/%7Euser/x%2c"] {
            assert_eq!(pattern_escapes(p), n(p), "{p}");
        }
    }

    #[test]
    fn escapes_no_normalised_path_holds_are_found() {
        for p in ["/a%2A", "/a%2a/b", "/bad%zz", "/x%", "/a%2*", "/a%%32%46"] {
            assert!(unmatchable_escape(p).is_some(), "{p}");
        }
        for p in ["/a%2F", "/users/admin%40x", "/plain/*", "*.bak", "/%E2%82%AC"] {
            assert_eq!(unmatchable_escape(p), None, "{p}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/list", "/a/b/", "/a.b/c..d/.e", "/files/x.tar.gz"] {
            assert!(
                matches!(normalize(p, EscapedSlashes::Keep).unwrap(), Cow::Borrowed(_)),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_are_resolved() {
        assert_eq!(n("/admin/../x"), "/x");
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a//b///"), "/a/b/");
    }

    #[test]
    fn a_segments_own_escapes_are_decoded_others_kept_upper_case() {
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/x/%2E%2E/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        // A segment's own characters, which routers may decode.
        assert_eq!(n("/items/7%3adelete"), "/items/7:delete");
        assert_eq!(n("/%21%24%26%27%28%29%2A%2B%2C%3B%3D%40"), "/!$&'()*+,;=@");
        // Not those that end or split a path, nor `%` itself.
        assert_eq!(n("/a%3Fb%23c%25dx"), "/a%3Fb%23c%25dx");
    }

    #[test]
    fn raw_bytes_a_uri_holds_only_escaped_are_matched_escaped() {
        assert_eq!(n("/files/privé/x"), "/files/priv%C3%A9/x");
        assert_eq!(n("/files/privé/x"), n("/files/priv%c3%a9/x"));
        assert_eq!(n("/a{b}|c\"d"), "/a%7Bb%7D%7Cc%22d");
        assert_eq!(n("/files/[private]/x"), n("/files/%5bprivate%5D/x"));
        assert_eq!(n("/a\\b"), n("/a%5cb"), "with escapedSlashes: KEEP");
        assert_eq!(n("/a%7bb"), "/a%7Bb");
        assert_eq!(n("/x/../€"), "/%E2%82%AC");
        assert_eq!(
            normalize("/é\\", EscapedSlashes::Reject),
            Err(PathError::EscapedSlash)
        );
        // Patterns alike; templates are left as they are.
        assert_eq!(pattern_escapes("/files/privé/*"), "/files/priv%C3%A9/*");
        assert_eq!(pattern_escapes("/files/priv%c3%a9/*"), "/files/priv%C3%A9/*");
        assert_eq!(pattern_escapes("/é/{*}/x/{**}"), "/%C3%A9/{*}/x/{**}");
        assert_eq!(pattern_escapes("/{*}/{**}"), "/{*}/{**}");
    }

    #[test]
    fn escaping_raw_bytes_alone_needs_no_rewrite() {
        let needs = |raw: &str| needs_rewrite(raw, &n(raw));
        assert!(!needs("/café"), "axum's literal routes match the raw form");
        assert!(!needs("/a{b}|c/é%40x[\\]"));
        assert!(!needs("/items/a%2Bb"), "a `+` decoded");
        assert!(needs("/café/../x"), "a dot segment too");
        assert!(needs("/caf%c3%a9"), "an escape upper-cased");
    }

    #[test]
    fn the_router_is_handed_raw_bytes_as_they_were_sent() {
        let r = |raw: &str| router_form(raw, EscapedSlashes::Keep).unwrap();
        assert_eq!(r("/x/../café"), "/café", "raw stays raw");
        assert_eq!(r("/x/../caf%c3%a9"), "/caf%C3%A9", "escaped stays escaped");
        assert_eq!(r("//[a]/./é|b/..//%61"), "/[a]/a");
        assert_eq!(r("/é\\x/./ü/"), "/é\\x/ü/", "a `\\` kept");
        // The segments are the matching form's, byte for byte once escaped.
        for raw in ["/x/../café", "//[a]/./é|b/..//%61", "/a/{b}/../ü%2B/"] {
            assert_eq!(n(&r(raw)), n(raw), "{raw}");
        }
        for raw in ["/a\\b", "/é\\b", "/[\\b", "/x/../é|\\"] {
            assert_eq!(
                router_form(raw, EscapedSlashes::Reject),
                Err(PathError::EscapedSlash),
                "{raw}"
            );
        }
    }

    #[test]
    fn decoding_a_segments_own_escapes_alone_needs_no_rewrite() {
        let needs = |raw: &str| needs_rewrite(raw, &n(raw));
        assert!(!needs("/users/alice%40example.com"));
        assert!(!needs("/items/7%3Adelete"));
        assert!(!needs("/a%3a%2C"), "lower-case hex of a decoded escape");
        assert!(needs("/items/7%3Adelete/../x"), "a dot segment too");
        assert!(needs("/%61dmin"), "an unreserved character");
        assert!(needs("/a%2fb"), "an escape upper-cased");
        assert!(needs("//a%40b"), "a merged slash");
    }

    #[test]
    fn malformed_escapes_are_errors() {
        assert_eq!(
            normalize("/a%zz", EscapedSlashes::Keep),
            Err(PathError::BadEscape)
        );
        assert_eq!(normalize("/a%2", EscapedSlashes::Keep), Err(PathError::BadEscape));
    }

    #[test]
    fn escaped_slashes_can_be_rejected() {
        assert_eq!(n("/a\\b"), "/a%5Cb");
        assert_eq!(
            normalize("/a%2Fb", EscapedSlashes::Reject),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(
            normalize("/a%5cb", EscapedSlashes::Reject),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(
            normalize("/a\\b", EscapedSlashes::Reject),
            Err(PathError::EscapedSlash)
        );
    }

    #[test]
    fn non_origin_form_is_left_alone() {
        assert_eq!(n("*"), "*");
    }

    /// [`is_normal`] as first written: every byte matched, the one before
    /// it carried along.
    fn is_normal_reference(path: &[u8]) -> bool {
        let mut prev = 0u8;
        for (i, &b) in path.iter().enumerate() {
            match b {
                b'%' => return false,
                b'"'
                | b'<'
                | b'>'
                | b'['
                | b'\\'
                | b']'
                | b'^'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | 0..=b' '
                | 0x7F.. => {
                    return false;
                }
                b'/' if prev == b'/' => return false,
                b'.' if prev == b'/' => {
                    let rest = &path[i..];
                    if rest == b"." || rest == b".." || rest.starts_with(b"./") || rest.starts_with(b"../") {
                        return false;
                    }
                }
                _ => {}
            }
            prev = b;
        }
        true
    }

    proptest::proptest! {
        #[test]
        fn the_quick_scan_answers_as_the_byte_by_byte_one(raw in "(/|\\.|%|\\\\|a|-|~|0|9|Z|\\[|\\]|\\^|\\x00|\\x7f|é){0,16}") {
            proptest::prop_assert_eq!(
                is_normal(raw.as_bytes()),
                is_normal_reference(raw.as_bytes()),
                "{:?}", raw
            );
        }

        #[test]
        fn normalised_paths_are_fixed_points(raw in "(/|\\.|\\.\\.|%2[eEfF]|%6[01]|%zz|%c3|%7b|%5b|%2b|a|b|\\\\|é|\\{|\\[|\\^| |\\x7f){0,12}") {
            let path = format!("/{raw}");
            if let Ok(n) = normalize(&path, EscapedSlashes::Keep) {
                proptest::prop_assert!(!n.contains("//"), "{n}");
                proptest::prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
                proptest::prop_assert_eq!(normalize(&n, EscapedSlashes::Keep).unwrap(), n.clone());
                proptest::prop_assert_eq!(pattern_escapes(&n), n.clone(), "a pattern written normalised");
            }
            if is_normal(path.as_bytes()) {
                proptest::prop_assert_eq!(decode_escapes(&path, EscapedSlashes::Keep, Raw::Escaped).unwrap(), path.clone());
            }
        }

        #[test]
        fn the_routers_form_is_matched_as_the_request_is(raw in "(/|\\.|\\.\\.|%2[eEfF]|%6[01]|%c3%a9|%7b|%5b|%2b|a|\\\\|é|\\{|\\[|\\^| ){0,12}") {
            let path = format!("/{raw}");
            for mode in [EscapedSlashes::Keep, EscapedSlashes::Reject] {
                match normalize(&path, mode) {
                    Ok(matched) => {
                        let routed = router_form(&path, mode).unwrap();
                        proptest::prop_assert_eq!(normalize(&routed, mode).unwrap(), matched, "{}", routed);
                    }
                    Err(e) => proptest::prop_assert_eq!(router_form(&path, mode), Err(e)),
                }
            }
        }
    }
}
