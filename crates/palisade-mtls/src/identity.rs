//! The peer's identity, parsed once per connection from the certificate
//! chain rustls has verified: its SPIFFE ID (the single URI SAN), trust
//! domain, namespace and service account, DNS names, subject and SHA-256
//! fingerprint. The common name is never taken as an identity.

use std::fmt;

use aws_lc_rs::digest;
use palisade_core::PeerIdentity;
#[cfg(any(feature = "axum", feature = "actix"))]
use palisade_core::authn::ConnectionInfo;
#[cfg(any(feature = "axum", feature = "actix"))]
use palisade_core::{Identity, Verification};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A SPIFFE ID that follows the SPIFFE-ID rules: `spiffe://` and a trust
/// domain of `[a-z0-9.-_]`, then a path of non-empty segments of
/// `[a-zA-Z0-9.-_]`, none `.` or `..`; no port, user, query or fragment; at
/// most 2048 bytes.
///
/// ```
/// use palisade_mtls::SpiffeId;
/// let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/productpage").unwrap();
/// assert_eq!(id.trust_domain(), "cluster.local");
/// assert_eq!(id.namespace(), Some("default"));
/// assert_eq!(id.service_account(), Some("productpage"));
/// assert_eq!(id.principal(), "cluster.local/ns/default/sa/productpage");
/// assert!(SpiffeId::parse("spiffe://Cluster.local/x").is_err());
/// assert!(SpiffeId::parse("spiffe://td/a/../b").is_err());
/// // As a string would be: parsed, shown, compared, sorted.
/// let parsed: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap();
/// assert!(id < parsed);
/// assert_eq!(String::from(parsed), "spiffe://cluster.local/ns/default/sa/reviews");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    td_end: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a SPIFFE ID: {0}")]
pub struct SpiffeIdError(&'static str);

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// # Errors
    /// [`SpiffeIdError`] saying which rule the string breaks.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.len() > 2048 {
            return Err(SpiffeIdError("longer than 2048 bytes"));
        }
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or(SpiffeIdError("the scheme must be spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError("the trust domain is empty"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(SpiffeIdError(
                "the trust domain may only hold a-z, 0-9, '.', '-' and '_' (no port, user or upper case)",
            ));
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(SpiffeIdError("a path segment is empty"));
                }
                if seg == "." || seg == ".." {
                    return Err(SpiffeIdError("a path segment is . or .."));
                }
                if !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    return Err(SpiffeIdError(
                        "a path segment may only hold a-z, A-Z, 0-9, '.', '-' and '_' (no query or fragment)",
                    ));
                }
            }
        }
        Ok(Self {
            id: text.to_owned(),
            td_end: "spiffe://".len() + td.len(),
        })
    }

    /// The whole ID, `spiffe://…`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.td_end]
    }

    /// The path, `/ns/default/sa/productpage` (empty for a trust domain ID).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.id[self.td_end..]
    }

    /// Istio's principal: the ID without `spiffe://`.
    #[must_use]
    pub fn principal(&self) -> &str {
        &self.id["spiffe://".len()..]
    }

    /// The peer identity a certificate with this ID as its only URI SAN
    /// gives ([`peer_identity`]): Istio's `source.principal` and
    /// `source.namespace`, and the ID. What else a certificate tells (DNS
    /// names, subject, fingerprint) is left empty.
    ///
    /// ```
    /// use palisade_mtls::SpiffeId;
    /// let peer = SpiffeId::parse("spiffe://cluster.local/ns/frontend/sa/web")?.peer();
    /// assert_eq!(peer.principal.as_deref(), Some("cluster.local/ns/frontend/sa/web"));
    /// assert_eq!(peer.namespace.as_deref(), Some("frontend"));
    /// # Ok::<(), palisade_mtls::SpiffeIdError>(())
    /// ```
    #[must_use]
    pub fn peer(&self) -> PeerIdentity {
        let mut peer = PeerIdentity::default();
        peer.principal = Some(self.principal().to_owned());
        peer.namespace = self.namespace().map(str::to_owned);
        peer.spiffe_id = Some(self.id.clone());
        peer
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace, when the path is `/ns/NS/sa/SA`.
    #[must_use]
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account, when the path is `/ns/NS/sa/SA`.
    #[must_use]
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(text)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(text: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(text)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

/// Lower-case hex SHA-256 of a certificate's DER.
#[must_use]
pub fn fingerprint_sha256(der: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, der);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The identity of a peer whose chain rustls has verified (leaf first).
/// `None` when there is no certificate or the leaf cannot be parsed.
///
/// More than one URI SAN, or a URI SAN that is not a valid SPIFFE ID, gives
/// no SPIFFE identity (no principal, no namespace); DNS names, subject and
/// fingerprint are still there. The common name is never used.
#[must_use]
pub fn peer_identity(leaf_der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
    let (spiffe, dns_names) = names(&cert);
    let mut peer = spiffe.as_ref().map(SpiffeId::peer).unwrap_or_default();
    peer.dns_names = dns_names;
    peer.subject = cert.subject().to_string();
    peer.fingerprint_sha256 = fingerprint_sha256(leaf_der);
    // Before the epoch (no such certificate verifies): unknown.
    peer.not_after = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    Some(peer)
}

/// A certificate's SPIFFE ID (its one URI SAN, when that is a valid one
/// and the certificate may be an X509-SVID's leaf: [`svid_leaf`]) and its
/// DNS names.
fn names(cert: &X509Certificate<'_>) -> (Option<SpiffeId>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(*u),
                GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    let spiffe = match uris.as_slice() {
        [one] => SpiffeId::parse(one).ok().filter(|id| svid_leaf(cert, id)),
        _ => None,
    };
    (spiffe, dns_names)
}

/// Whether `cert`, naming `id`, may be the leaf of an X509-SVID (the
/// SPIFFE X509-SVID specification, §3 and §5.2, as go-spiffe checks it):
/// `id` names a workload, not a trust domain alone (`spiffe://td` has no
/// path), and the certificate is no CA: not `CA:TRUE`, and its key usage,
/// if it says one, has digitalSignature and neither keyCertSign nor
/// cRLSign. rustls refuses a
/// CA as a peer's leaf, but not the key usage, and [`peer_identity`] may
/// be given a chain nobody verified.
fn svid_leaf(cert: &X509Certificate<'_>, id: &SpiffeId) -> bool {
    let not_ca = match cert.basic_constraints() {
        Ok(constraints) => constraints.is_none_or(|c| !c.value.ca),
        Err(_) => false,
    };
    // A key usage, when said, must allow signing (an SVID's key proves
    // possession by a signature: §4.3, digitalSignature) and no CA's.
    let usage_fits = match cert.key_usage() {
        Ok(usage) => usage
            .is_none_or(|u| u.value.digital_signature() && !u.value.key_cert_sign() && !u.value.crl_sign()),
        Err(_) => false,
    };
    !id.path().is_empty() && not_ca && usage_fits
}

/// The SPIFFE ID of a certificate, as [`peer_identity`] reads it.
pub(crate) fn spiffe_id_of(leaf_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
    spiffe_id_from(&cert)
}

/// The SPIFFE ID of a parsed certificate, as [`peer_identity`] reads it.
pub(crate) fn spiffe_id_from(cert: &X509Certificate<'_>) -> Option<SpiffeId> {
    names(cert).0
}

/// A certificate's `notAfter`, in seconds since the epoch (`None` when it
/// does not parse, or is before the epoch).
pub(crate) fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// A CRL's `nextUpdate`, in seconds since the epoch (`None` when it does
/// not parse or has none).
pub(crate) fn crl_next_update(der: &[u8]) -> Option<u64> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).ok()?;
    u64::try_from(crl.next_update()?.timestamp()).ok()
}

/// The verified `Identity` of a peer: only code that has verified the
/// chain (this crate's acceptors) calls this.
#[cfg(any(feature = "axum", feature = "actix"))]
fn verified_identity(leaf_der: &[u8]) -> Option<Identity> {
    peer_identity(leaf_der).map(|p| Identity::from_peer(p, Verification::assertion()))
}

/// Fills in what a completed rustls handshake tells about the connection:
/// the SNI and, for a client certificate rustls verified, the peer identity
/// (parsed here, once per connection) and its chain. Both acceptors (axum,
/// actix-web) call this.
/// With a client certificate, the check of its chain at every request
/// `tls` makes ([`ConnectionInfo::peer_recheck`]): a reload or the chain's
/// expiry after the handshake refuses the connection's later requests;
/// without one, the check of the mode in force (a switch to STRICT
/// refuses them).
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn fill_from_session(
    info: &mut ConnectionInfo,
    session: &rustls::ServerConnection,
    tls: &crate::ServerTls,
) {
    info.tls = true;
    info.sni = session.server_name().map(str::to_owned);
    match session.peer_certificates() {
        Some(chain) if !chain.is_empty() => {
            info.peer = chain.first().and_then(|leaf| verified_identity(leaf));
            info.peer_certificates = chain.iter().map(|c| c.to_vec()).collect();
            // Whether or not an identity was read from it: a chain the
            // handshake verified is checked again at every request (a CRL
            // reloaded since, its expiry).
            info.peer_recheck = Some(tls.peer_recheck(info.peer_certificates.clone()));
        }
        // Without a certificate: still accepted while the mode in force
        // takes TLS without one.
        _ => info.peer_recheck = tls.mode_recheck(false),
    }
}

#[cfg(test)]
mod tests {
    use palisade_testkit::TestPki;

    use super::*;

    #[test]
    fn spiffe_ids_follow_the_spiffe_rules() {
        for good in [
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://td",
            "spiffe://a-b_c.d/x.y/Z_9",
        ] {
            assert!(SpiffeId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "http://cluster.local/x",
            "spiffe://",
            "spiffe:///x",
            "spiffe://TD/x",
            "spiffe://td:443/x",
            "spiffe://user@td/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "spiffe://td/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2040));
        assert!(SpiffeId::parse(&long).is_err());
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b/extra").unwrap();
        assert_eq!(
            id.namespace(),
            None,
            "only the exact /ns/NS/sa/SA form has a namespace"
        );
    }

    #[test]
    fn a_workload_certificate_gives_its_spiffe_identity() {
        let pki = TestPki::new();
        let cert = pki.workload("default", "productpage");
        let peer = peer_identity(&cert.cert_der()).unwrap();
        assert_eq!(
            peer.principal.as_deref(),
            Some("cluster.local/ns/default/sa/productpage")
        );
        assert_eq!(
            peer.spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/productpage")
        );
        assert_eq!(peer.namespace.as_deref(), Some("default"));
        assert_eq!(peer.fingerprint_sha256, cert.sha256_fingerprint());
        assert!(peer.subject.contains("CN=productpage"), "{}", peer.subject);
        // The testkit's workload certificates run for a day from now.
        let left = peer
            .not_after
            .expect("the certificate's expiry")
            .duration_since(std::time::SystemTime::now())
            .expect("not expired");
        assert!(
            (std::time::Duration::from_secs(86_000)..=std::time::Duration::from_secs(86_400)).contains(&left),
            "{left:?}"
        );
    }

    #[test]
    fn two_uri_sans_or_a_bad_uri_give_no_spiffe_identity_and_the_cn_is_never_used() {
        let pki = TestPki::new();
        let two = pki.client_with_uris(&[
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/c/sa/d",
        ]);
        let peer = peer_identity(&two.cert_der()).unwrap();
        assert_eq!(
            (peer.principal, peer.spiffe_id, peer.namespace),
            (None, None, None)
        );
        let bad = pki.client_with_uris(&["spiffe://Cluster.Local/ns/a/sa/b"]);
        assert_eq!(peer_identity(&bad.cert_der()).unwrap().principal, None);
        // An ID that names a trust domain alone, a leaf that may sign
        // certificates or CRLs, or one whose key usage does not allow
        // signatures, is no X509-SVID.
        for no_svid in [
            pki.client_with_uris(&["spiffe://cluster.local"]),
            pki.signing_workload("default", "productpage"),
            pki.unsigning_workload("default", "productpage"),
            pki.ca_naming_a_workload("default", "productpage"),
        ] {
            let peer = peer_identity(&no_svid.cert_der()).unwrap();
            assert_eq!((peer.principal, peer.spiffe_id), (None, None), "{no_svid:?}");
        }
        let server = pki.server(&["details.default.svc"]);
        let peer = peer_identity(&server.cert_der()).unwrap();
        assert_eq!(
            peer.principal, None,
            "a CN or DNS name is not a workload identity"
        );
        assert_eq!(peer.dns_names, ["details.default.svc"]);
        assert!(peer_identity(b"not a certificate").is_none());
    }
}
