//! Looks at a Negotiate token before GSSAPI does, so that NTLM and NegoEx
//! never reach it (a browser must not get an NTLM password prompt) and only
//! a first-round Kerberos token (raw, or SPNEGO whose preferred mechanism
//! is Kerberos) goes on. Every read is bounds-checked: untrusted input.

/// `1.3.6.1.5.5.2`
const SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// `1.2.840.113554.1.2.2`
const KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// `1.2.840.48018.1.2.2` (Microsoft's Kerberos OID)
const MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];

/// What a Negotiate token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenKind {
    /// SPNEGO `NegTokenInit` whose preferred mechanism is Kerberos.
    SpnegoKerberos,
    /// A raw Kerberos initial context token.
    Kerberos,
    /// Raw NTLMSSP.
    Ntlm,
    /// SPNEGO preferring another mechanism (NTLM, NegoEx, …).
    SpnegoOther,
    /// A SPNEGO continuation (`NegTokenResp`): Palisade keeps no half-open
    /// contexts between requests.
    Continuation,
    /// Not a token.
    Malformed,
}

impl TokenKind {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            TokenKind::SpnegoKerberos | TokenKind::Kerberos => "the Negotiate token is not acceptable",
            TokenKind::Ntlm | TokenKind::SpnegoOther => "only Kerberos is accepted, not NTLM",
            TokenKind::Continuation => "the Negotiate token continues a context this service does not keep",
            TokenKind::Malformed => "the Negotiate token is malformed",
        }
    }
}

/// A DER element: (tag, content, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Classifies a decoded Negotiate token.
pub(crate) fn classify(token: &[u8]) -> TokenKind {
    if token.starts_with(b"NTLMSSP\0") {
        return TokenKind::Ntlm;
    }
    match token.first() {
        Some(0xa1) => return TokenKind::Continuation,
        Some(0x60) => {}
        _ => return TokenKind::Malformed,
    }
    // InitialContextToken ::= [APPLICATION 0] IMPLICIT SEQUENCE { thisMech OID, innerToken }
    let Some((_, body, _)) = element(token) else {
        return TokenKind::Malformed;
    };
    let Some((0x06, oid, inner)) = element(body) else {
        return TokenKind::Malformed;
    };
    if oid == KRB5 {
        return TokenKind::Kerberos;
    }
    if oid != SPNEGO {
        return TokenKind::SpnegoOther;
    }
    // NegotiationToken ::= negTokenInit [0] NegTokenInit
    let Some((0xa0, init, _)) = element(inner) else {
        return TokenKind::Malformed;
    };
    let Some((0x30, fields, _)) = element(init) else {
        return TokenKind::Malformed;
    };
    // mechTypes [0] MechTypeList (SEQUENCE OF OID): the first is preferred,
    // and the optimistic mechToken is for it.
    let Some((0xa0, mechs, _)) = element(fields) else {
        return TokenKind::Malformed;
    };
    let Some((0x30, list, _)) = element(mechs) else {
        return TokenKind::Malformed;
    };
    match element(list) {
        Some((0x06, first, _)) if first == KRB5 || first == MS_KRB5 => TokenKind::SpnegoKerberos,
        Some((0x06, _, _)) => TokenKind::SpnegoOther,
        _ => TokenKind::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn spnego(mechs: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = mechs.iter().flat_map(|m| der(0x06, m)).collect();
        let init = der(0x30, &der(0xa0, &der(0x30, &list)));
        let mut body = der(0x06, SPNEGO);
        body.extend(der(0xa0, &init));
        der(0x60, &body)
    }

    #[test]
    fn kerberos_first_is_accepted_ntlm_and_negoex_are_not() {
        assert_eq!(classify(&spnego(&[KRB5])), TokenKind::SpnegoKerberos);
        assert_eq!(classify(&spnego(&[MS_KRB5, KRB5])), TokenKind::SpnegoKerberos);
        let ntlm_oid: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
        assert_eq!(classify(&spnego(&[ntlm_oid, KRB5])), TokenKind::SpnegoOther);
        assert_eq!(classify(b"NTLMSSP\0\x01\0\0\0"), TokenKind::Ntlm);
        let mut raw = der(0x06, KRB5);
        raw.extend_from_slice(&[0x01, 0x00]);
        assert_eq!(classify(&der(0x60, &raw)), TokenKind::Kerberos);
        assert_eq!(classify(&[0xa1, 0x03, 0x30, 0x01, 0x00]), TokenKind::Continuation);
    }

    #[test]
    fn truncated_or_lying_lengths_are_malformed_not_panics() {
        let good = spnego(&[KRB5]);
        for cut in 0..good.len() {
            let k = classify(&good[..cut]);
            assert!(
                matches!(k, TokenKind::Malformed | TokenKind::SpnegoOther),
                "{cut}: {k:?}"
            );
        }
        assert_eq!(
            classify(&[0x60, 0x84, 0xff, 0xff, 0xff, 0xff]),
            TokenKind::Malformed
        );
        assert_eq!(classify(&[0x60, 0x80]), TokenKind::Malformed);
        assert_eq!(classify(b""), TokenKind::Malformed);
        assert_eq!(classify(b"garbage"), TokenKind::Malformed);
    }
}
