//! Any bytes as a decoded Negotiate token: the inspection before GSSAPI
//! answers, never panics, and never lets NTLM through.

use palisade_spnego::{TokenKind, inspect_token};

/// One input.
pub fn run(data: &[u8]) {
    let kind = inspect_token(data);
    if data.starts_with(b"NTLMSSP\0") {
        assert_eq!(kind, TokenKind::Ntlm);
    }
    if matches!(kind, TokenKind::SpnegoKerberos | TokenKind::Kerberos) {
        assert_eq!(
            data.first(),
            Some(&0x60),
            "only initial context tokens reach GSSAPI"
        );
    }
}
