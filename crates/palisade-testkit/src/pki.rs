//! A throw-away PKI for mTLS tests: a CA, SPIFFE workload certificates as
//! Istio issues them, TLS server certificates, the bad cases a verifier must
//! refuse, and a CRL.
//!
//! [`TestPki`] is a fresh certificate authority with an ECDSA P-256 key. It
//! issues [`TestCert`]s (leaf certificate and PKCS#8 key, PEM or DER), each
//! with its own random serial number so that [`TestPki::revoke`] revokes
//! exactly one certificate, and signs a CRL on demand.
//!
//! ```
//! use palisade_testkit::TestPki;
//! let pki = TestPki::new();
//! let alice = pki.workload("default", "alice");
//! assert_eq!(alice.spiffe_id(), Some("spiffe://cluster.local/ns/default/sa/alice"));
//! assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(alice.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
//!
//! // The bad cases.
//! let stranger = TestPki::new().workload("default", "alice"); // unknown CA
//! let expired = pki.expired("default", "alice");
//! let mut pki = pki;
//! pki.revoke(&alice);
//! assert!(pki.crl_pem().starts_with("-----BEGIN X509 CRL-----"));
//! # let _ = (stranger, expired);
//! ```
//!
//! Every certificate carries a SubjectKeyIdentifier, and every leaf an
//! AuthorityKeyIdentifier naming the CA, as rcgen derives them (truncated
//! SHA-256 of the public key); leaves are marked `CA:FALSE` and have the
//! `digitalSignature` key usage, the CA `keyCertSign` and `cRLSign` as well.
//!
//! Times are whole seconds (X.509 `UTCTime`), taken from the system clock
//! when each certificate or CRL is made.

use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The trust domain of [`TestPki::new`], as in a default Istio install.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The common name of every test CA.
const CA_COMMON_NAME: &str = "Palisade Test CA";

/// A test certificate authority: an ECDSA P-256 key, its self-signed
/// certificate, a SPIFFE trust domain and the serials it has revoked.
///
/// An "unknown CA" is simply another `TestPki::new()`. `Debug` shows the
/// trust domain, the CA fingerprint and the revoked serials, never the key.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    trust_domain: String,
    revoked: Vec<RevokedCertParams>,
    /// The number of the last CRL issued; each CRL gets the next one.
    crl_number: AtomicU64,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("trust_domain", &self.trust_domain)
            .field("ca_sha256", &sha256_hex(self.ca.der()))
            .field(
                "revoked",
                &self
                    .revoked
                    .iter()
                    .map(|r| hex(r.serial_number.as_ref()))
                    .collect::<Vec<_>>(),
            )
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

impl Default for TestPki {
    /// Same as [`TestPki::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A fresh CA, `CN=Palisade Test CA, O=cluster.local, OU=<random id>`,
    /// for the trust domain `cluster.local`, valid from a day ago for ten
    /// years. The random organisational unit gives every CA its own name,
    /// so a certificate of another `TestPki` is from an unknown issuer.
    ///
    /// # Panics
    /// If the system's random generator or the key generation fails.
    #[must_use]
    pub fn new() -> TestPki {
        Self::with_trust_domain(DEFAULT_TRUST_DOMAIN)
    }

    /// A fresh CA for the SPIFFE trust domain `domain` (its certificate's
    /// organisation, as Istio names its root); otherwise as [`TestPki::new`].
    ///
    /// The domain is not checked; a non-ASCII one makes the workload
    /// methods panic, as a SPIFFE ID must be ASCII.
    ///
    /// # Panics
    /// If the system's random generator or the key generation fails.
    #[must_use]
    pub fn with_trust_domain(domain: &str) -> TestPki {
        let now = now();
        let mut params = CertificateParams::default();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3653);
        params.serial_number = Some(random_serial());
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name.push(DnType::OrganizationName, domain);
        // Without it every test CA of a trust domain would have the same name,
        // and a verifier would try another CA's certificate against it and
        // report a bad signature instead of an unknown issuer.
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, hex(&random_bytes(8)));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let ca = CertifiedIssuer::self_signed(params, generate_key())
            .expect("signing the test CA certificate with its own fresh P-256 key");
        TestPki {
            ca,
            trust_domain: domain.to_owned(),
            revoked: Vec::new(),
            crl_number: AtomicU64::new(0),
        }
    }

    /// The SPIFFE trust domain (`cluster.local` unless chosen with
    /// [`TestPki::with_trust_domain`]).
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM: the trust bundle to give a verifier.
    #[must_use]
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate, DER (for a `rustls::RootCertStore`).
    #[must_use]
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// A workload certificate as Istio issues it: the URI SAN
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service_account>`, the
    /// extended key usages clientAuth and serverAuth, `CN=<service_account>`,
    /// valid from an hour ago for a day.
    ///
    /// # Panics
    /// If the SPIFFE ID or the common name is not ASCII, or the key
    /// generation or signing fails.
    #[must_use]
    pub fn workload(&self, namespace: &str, service_account: &str) -> TestCert {
        let now = now();
        self.workload_cert(
            namespace,
            service_account,
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            (now - Duration::hours(1), now + Duration::days(1)),
        )
    }

    /// A TLS server certificate for `dns_names` (a DNS SAN for each, an IP
    /// SAN for a name that parses as an IP address, as `"127.0.0.1"` or
    /// `"::1"`), extended key usage serverAuth, `CN=<the first name>`, valid
    /// from an hour ago for a day.
    ///
    /// # Panics
    /// If a name is not ASCII, or the key generation or signing fails.
    #[must_use]
    pub fn server(&self, dns_names: &[&str]) -> TestCert {
        let sans = dns_names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(name, "a server DNS name")),
            })
            .collect();
        let now = now();
        self.issue(
            dns_names.first().copied().unwrap_or("Palisade Test Server"),
            sans,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            (now - Duration::hours(1), now + Duration::days(1)),
            None,
        )
    }

    /// A client certificate with exactly the URI SANs `uris` (none, one, or
    /// two for the "two URI SANs" case a SPIFFE verifier must refuse),
    /// extended key usage clientAuth, `CN=Palisade Test Client`, valid from
    /// an hour ago for a day.
    ///
    /// Its [`TestCert::spiffe_id`] is the URI when there is exactly one and
    /// it starts with `spiffe://`, as an X509-SVID requires, else `None`.
    ///
    /// # Panics
    /// If a URI is not ASCII, or the key generation or signing fails.
    #[must_use]
    pub fn client_with_uris(&self, uris: &[&str]) -> TestCert {
        let sans = uris.iter().map(|u| SanType::URI(ia5(u, "a URI SAN"))).collect();
        let spiffe_id = match uris {
            [only] if only.starts_with("spiffe://") => Some((*only).to_owned()),
            _ => None,
        };
        let now = now();
        self.issue(
            "Palisade Test Client",
            sans,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            (now - Duration::hours(1), now + Duration::days(1)),
            spiffe_id,
        )
    }

    /// A workload certificate (as [`TestPki::workload`]) whose validity
    /// ended a day ago (it ran from ten days ago to yesterday).
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn expired(&self, namespace: &str, sa: &str) -> TestCert {
        let now = now();
        self.workload_cert(
            namespace,
            sa,
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            (now - Duration::days(10), now - Duration::days(1)),
        )
    }

    /// A workload certificate (as [`TestPki::workload`]) valid from
    /// tomorrow, for a day.
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn not_yet_valid(&self, namespace: &str, sa: &str) -> TestCert {
        let now = now();
        self.workload_cert(
            namespace,
            sa,
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            (now + Duration::days(1), now + Duration::days(2)),
        )
    }

    /// A workload certificate (as [`TestPki::workload`]) whose only extended
    /// key usage is serverAuth, so it cannot authenticate a client.
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn wrong_eku(&self, namespace: &str, sa: &str) -> TestCert {
        let now = now();
        self.workload_cert(
            namespace,
            sa,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            (now - Duration::hours(1), now + Duration::days(1)),
        )
    }

    /// A workload certificate (as [`TestPki::workload`]) whose key usage
    /// is keyEncipherment alone, without digitalSignature: no X509-SVID
    /// (its key cannot prove itself by a signature), which a SPIFFE
    /// verifier must refuse as an identity.
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn unsigning_workload(&self, namespace: &str, sa: &str) -> TestCert {
        self.workload_as(
            namespace,
            sa,
            &[KeyUsagePurpose::KeyEncipherment],
            IsCa::ExplicitNoCa,
        )
    }

    /// A workload certificate (as [`TestPki::workload`]) whose key usage
    /// also has keyCertSign and cRLSign, though it is no CA (`CA:FALSE`):
    /// no X509-SVID, which a SPIFFE verifier must refuse as an identity.
    /// Its [`TestCert::spiffe_id`] is still the URI SAN it carries.
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn signing_workload(&self, namespace: &str, sa: &str) -> TestCert {
        self.workload_as(
            namespace,
            sa,
            &[
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ],
            IsCa::ExplicitNoCa,
        )
    }

    /// A certificate naming a workload's SPIFFE ID (as
    /// [`TestPki::workload`]) that says it is a CA (`CA:TRUE`; its key
    /// usage digitalSignature only): no X509-SVID leaf, which a SPIFFE
    /// verifier must refuse as an identity. Its [`TestCert::spiffe_id`]
    /// is still the URI SAN it carries.
    ///
    /// # Panics
    /// As [`TestPki::workload`].
    #[must_use]
    pub fn ca_naming_a_workload(&self, namespace: &str, sa: &str) -> TestCert {
        self.workload_as(
            namespace,
            sa,
            &[KeyUsagePurpose::DigitalSignature],
            IsCa::Ca(BasicConstraints::Unconstrained),
        )
    }

    /// A workload certificate as [`TestPki::workload`]'s, with these key
    /// usages and basic constraints.
    fn workload_as(
        &self,
        namespace: &str,
        sa: &str,
        key_usages: &[KeyUsagePurpose],
        is_ca: IsCa,
    ) -> TestCert {
        let id = format!("spiffe://{}/ns/{namespace}/sa/{sa}", self.trust_domain);
        let now = now();
        self.issue_as(
            sa,
            vec![SanType::URI(ia5(&id, "a SPIFFE ID"))],
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            (now - Duration::hours(1), now + Duration::days(1)),
            Some(id),
            key_usages,
            is_ca,
        )
    }

    /// Revokes `cert`: its serial is listed by every CRL issued from now on
    /// ([`TestPki::crl_pem`]). Revoking a certificate twice lists it once.
    ///
    /// The serial is added whoever issued the certificate; a certificate of
    /// another CA is unaffected by this CA's CRL, as in real life.
    pub fn revoke(&mut self, cert: &TestCert) {
        if self
            .revoked
            .iter()
            .any(|r| r.serial_number.as_ref() == cert.serial.as_slice())
        {
            return;
        }
        self.revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&cert.serial),
            // Backdated as the CRL's thisUpdate is, so that every CRL that
            // lists it was issued after the revocation.
            revocation_time: now() - Duration::hours(1),
            reason_code: None,
            invalidity_date: None,
        });
    }

    /// A CRL signed by the CA listing every revoked serial, PEM
    /// (`X509 CRL`), valid from an hour ago for a day. Each call issues a
    /// new CRL with the next CRL number (1, 2, …).
    ///
    /// # Panics
    /// If signing fails.
    #[must_use]
    pub fn crl_pem(&self) -> String {
        self.crl()
            .pem()
            .expect("PEM-encoding a CRL the test CA has just signed")
    }

    /// The same CRL as [`TestPki::crl_pem`] in DER (for
    /// `rustls::server::WebPkiClientVerifier::builder(..).with_crls(..)`);
    /// each call issues a new CRL with the next CRL number.
    ///
    /// # Panics
    /// If signing fails.
    #[must_use]
    pub fn crl_der(&self) -> Vec<u8> {
        self.crl().der().to_vec()
    }

    /// A CRL like [`TestPki::crl_pem`]'s whose `nextUpdate` passed a day
    /// ago: one a verifier that enforces CRL expiry (as OpenSSL does)
    /// refuses to use.
    ///
    /// # Panics
    /// If signing or encoding fails.
    #[must_use]
    pub fn expired_crl_pem(&self) -> String {
        self.crl_until(now() - Duration::days(1))
            .pem()
            .expect("PEM-encoding a CRL the test CA has just signed")
    }

    fn crl(&self) -> rcgen::CertificateRevocationList {
        self.crl_until(now() + Duration::days(1))
    }

    fn crl_until(&self, next_update: OffsetDateTime) -> rcgen::CertificateRevocationList {
        let number = self.crl_number.fetch_add(1, Ordering::Relaxed) + 1;
        CertificateRevocationListParams {
            this_update: next_update - Duration::days(2),
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: self.revoked.clone(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .expect("signing a CRL with the test CA key (it has the cRLSign key usage)")
    }

    fn workload_cert(
        &self,
        namespace: &str,
        service_account: &str,
        ekus: &[ExtendedKeyUsagePurpose],
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> TestCert {
        let id = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        );
        self.issue(
            service_account,
            vec![SanType::URI(ia5(&id, "a SPIFFE ID"))],
            ekus,
            validity,
            Some(id),
        )
    }

    /// A leaf certificate of the CA, explicitly not a CA itself (`CA:FALSE`
    /// and the SubjectKeyIdentifier), key usage digitalSignature.
    fn issue(
        &self,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        ekus: &[ExtendedKeyUsagePurpose],
        validity: (OffsetDateTime, OffsetDateTime),
        spiffe_id: Option<String>,
    ) -> TestCert {
        self.issue_as(
            common_name,
            subject_alt_names,
            ekus,
            validity,
            spiffe_id,
            &[KeyUsagePurpose::DigitalSignature],
            IsCa::ExplicitNoCa,
        )
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the one place every test certificate is made"
    )]
    fn issue_as(
        &self,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        ekus: &[ExtendedKeyUsagePurpose],
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
        spiffe_id: Option<String>,
        key_usages: &[KeyUsagePurpose],
        is_ca: IsCa,
    ) -> TestCert {
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial.clone());
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = subject_alt_names;
        params.is_ca = is_ca;
        params.key_usages = key_usages.to_vec();
        params.extended_key_usages = ekus.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = generate_key();
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("signing a test certificate with the test CA key");
        TestCert {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
            spiffe_id,
        }
    }
}

/// A leaf certificate issued by a [`TestPki`] and its private key (ECDSA
/// P-256, PKCS#8). The CA is not part of it: see [`TestPki::ca_pem`].
///
/// `Debug` shows the SPIFFE ID, serial and fingerprint, never the key.
#[derive(Clone)]
pub struct TestCert {
    cert_der: Vec<u8>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
    serial: Vec<u8>,
    spiffe_id: Option<String>,
}

impl fmt::Debug for TestCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCert")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &hex(&self.serial))
            .field("sha256", &self.sha256_fingerprint())
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

impl TestCert {
    /// The leaf certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The private key, PKCS#8 PEM (`PRIVATE KEY`).
    #[must_use]
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// The leaf certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// The private key, PKCS#8 DER.
    #[must_use]
    pub fn key_der(&self) -> Vec<u8> {
        self.key_der.clone()
    }

    /// The SPIFFE ID in the URI SAN, for workload certificates and for
    /// [`TestPki::client_with_uris`] with a single `spiffe://` URI.
    #[must_use]
    pub fn spiffe_id(&self) -> Option<&str> {
        self.spiffe_id.as_deref()
    }

    /// The serial number, big-endian, as encoded in the certificate (16
    /// random bytes, positive).
    #[must_use]
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The SHA-256 fingerprint of the leaf certificate's DER, lower-case hex
    /// without separators.
    #[must_use]
    pub fn sha256_fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Writes the certificate to `<dir>/<name>.crt` and the key to
    /// `<dir>/<name>.key` (both PEM, for `curl --cert .. --key ..` or
    /// `openssl`), and returns the two paths. On Unix the key file is
    /// readable by its owner only. Existing files are overwritten.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write_to(&self, dir: &Path, name: &str) -> io::Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, &self.cert_pem)?;
        write_private(&key_path, self.key_pem.as_bytes())?;
        Ok((cert_path, key_path))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file; narrow an existing one too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    std::fs::File::create(path)?.write_all(contents)
}

fn generate_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating an ECDSA P-256 key")
}

/// 16 random bytes, most significant bit clear (a positive INTEGER) and the
/// next one set (no leading zero is stripped), so every serial is encoded
/// as exactly these bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness for a serial number or a CA name");
    bytes
}

fn random_serial() -> SerialNumber {
    let mut bytes = random_bytes(16);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn ia5(value: &str, what: &str) -> Ia5String {
    Ia5String::try_from(value).unwrap_or_else(|_| panic!("{what} must be ASCII (IA5String): {value:?}"))
}

fn now() -> OffsetDateTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
    };
    use rustls::{CertificateError, Error, RootCertStore};
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::{
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    };
    use x509_parser::prelude::X509Certificate;

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// Trust anchors from the PEM bundle, as a service would load them.
    fn roots(pki: &TestPki) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
        roots.add(ca).unwrap();
        Arc::new(roots)
    }

    fn verify_client(pki: &TestPki, cert: &TestCert) -> Result<(), Error> {
        let crl = CertificateRevocationListDer::from_pem_slice(pki.crl_pem().as_bytes()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
            .with_crls([crl])
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&CertificateDer::from(cert.cert_der()), &[], UnixTime::now())
            .map(|_| ())
    }

    /// Asserts that the client verifier refuses `cert` with a certificate
    /// error matching `pattern`.
    macro_rules! assert_refused {
        ($pki:expr, $cert:expr, $pattern:pat) => {{
            let err = verify_client($pki, $cert).unwrap_err();
            assert!(matches!(err, Error::InvalidCertificate($pattern)), "{err:?}");
        }};
    }

    fn parsed(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    fn uri_sans(der: &[u8]) -> Vec<String> {
        let cert = parsed(der);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn workload_cert_verifies_as_a_client_of_its_ca() {
        let pki = TestPki::new();
        verify_client(&pki, &pki.workload("default", "alice")).unwrap();
    }

    #[test]
    fn workload_uri_san_is_the_spiffe_id() {
        let pki = TestPki::new();
        let cert = pki.workload("bookinfo", "reviews");
        assert_eq!(
            cert.spiffe_id(),
            Some("spiffe://cluster.local/ns/bookinfo/sa/reviews")
        );
        assert_eq!(uri_sans(&cert.cert_der()), [cert.spiffe_id().unwrap()]);
        let der = cert.cert_der();
        let x509 = parsed(&der);
        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["reviews"]);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(!x509.is_ca());
        assert_eq!(x509.raw_serial(), cert.serial());
    }

    #[test]
    fn trust_domain_is_in_the_spiffe_id_and_the_ca_name() {
        let pki = TestPki::with_trust_domain("example.org");
        assert_eq!(pki.trust_domain(), "example.org");
        let cert = pki.workload("ns1", "sa1");
        assert_eq!(cert.spiffe_id(), Some("spiffe://example.org/ns/ns1/sa/sa1"));
        let ca_der = pki.ca_der();
        let ca = parsed(&ca_der);
        let cn: Vec<_> = ca
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        let o: Vec<_> = ca
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            (cn.as_slice(), o.as_slice()),
            (&["Palisade Test CA"][..], &["example.org"][..])
        );
        verify_client(&pki, &cert).unwrap();
    }

    #[test]
    fn ca_and_leaves_carry_key_identifiers_and_usages() {
        let pki = TestPki::new();
        let ca_der = pki.ca_der();
        let ca = parsed(&ca_der);
        assert!(ca.is_ca());
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let ca_ski = ca
            .get_extension_unique(&OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .unwrap()
            .value;
        let leaf_der = pki.server(&["localhost"]).cert_der();
        let leaf = parsed(&leaf_der);
        assert!(
            leaf.get_extension_unique(&OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
                .unwrap()
                .is_some()
        );
        let aki = leaf
            .get_extension_unique(&OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .unwrap()
            .value;
        // The AKI is SEQUENCE { [0] keyIdentifier }: it ends with the CA's
        // SKI (an OCTET STRING) content.
        assert!(aki.ends_with(&ca_ski[2..]), "{aki:02x?} vs {ca_ski:02x?}");
        assert_eq!(leaf.issuer(), ca.subject());
    }

    #[test]
    fn serials_are_unique_per_certificate() {
        let pki = TestPki::new();
        let a = pki.workload("default", "alice");
        let b = pki.workload("default", "alice");
        assert_ne!(a.serial(), b.serial());
        assert_eq!(a.serial().len(), 16);
        assert_ne!(a.sha256_fingerprint(), b.sha256_fingerprint());
    }

    #[test]
    fn expired_cert_fails() {
        let pki = TestPki::new();
        assert_refused!(
            &pki,
            &pki.expired("default", "alice"),
            CertificateError::ExpiredContext { .. }
        );
    }

    #[test]
    fn not_yet_valid_cert_fails() {
        let pki = TestPki::new();
        assert_refused!(
            &pki,
            &pki.not_yet_valid("default", "alice"),
            CertificateError::NotValidYetContext { .. }
        );
    }

    #[test]
    fn wrong_eku_cert_fails_as_a_client() {
        let pki = TestPki::new();
        assert_refused!(
            &pki,
            &pki.wrong_eku("default", "alice"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        );
    }

    #[test]
    fn cert_from_another_ca_fails() {
        let pki = TestPki::new();
        let other = TestPki::new();
        assert_ne!(parsed(&pki.ca_der()).subject(), parsed(&other.ca_der()).subject());
        let stranger = other.workload("default", "alice");
        assert_refused!(&pki, &stranger, CertificateError::UnknownIssuer);
    }

    #[test]
    fn revoked_cert_fails_once_the_crl_lists_it_and_passed_before() {
        let mut pki = TestPki::new();
        let alice = pki.workload("default", "alice");
        let bob = pki.workload("default", "bob");
        verify_client(&pki, &alice).unwrap();
        pki.revoke(&alice);
        pki.revoke(&alice);
        assert_refused!(&pki, &alice, CertificateError::Revoked);
        // Revocation is per certificate: the same CA's other leaves still pass.
        verify_client(&pki, &bob).unwrap();
        let crl_der = pki.crl_der();
        let crl = x509_parser::parse_x509_crl(&crl_der).unwrap().1;
        let listed: Vec<&[u8]> = crl.iter_revoked_certificates().map(|r| r.raw_serial()).collect();
        assert_eq!(listed, [alice.serial()]);
    }

    #[test]
    fn crl_number_increments_per_crl() {
        let pki = TestPki::new();
        let number = |der: Vec<u8>| {
            x509_parser::parse_x509_crl(&der)
                .unwrap()
                .1
                .crl_number()
                .unwrap()
                .to_bytes_be()
        };
        let first = number(pki.crl_der());
        let second = CertificateRevocationListDer::from_pem_slice(pki.crl_pem().as_bytes()).unwrap();
        assert_eq!(first, [1]);
        assert_eq!(number(second.to_vec()), [2]);
    }

    #[test]
    fn server_cert_verifies_for_localhost_and_its_ip() {
        let pki = TestPki::new();
        let cert = pki.server(&["localhost", "127.0.0.1"]);
        assert_eq!(cert.spiffe_id(), None);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&pki), provider())
            .build()
            .unwrap();
        let der = CertificateDer::from(cert.cert_der());
        for name in ["localhost", "127.0.0.1"] {
            verifier
                .verify_server_cert(
                    &der,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        let wrong = verifier.verify_server_cert(
            &der,
            &[],
            &ServerName::try_from("example.com").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(wrong.is_err());
        // A server certificate is not a client certificate.
        assert!(verify_client(&pki, &cert).is_err());
        // The PEM key and certificate make a working rustls server config.
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap();
        assert_eq!(key.secret_der(), cert.key_der().as_slice());
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    }

    #[test]
    fn client_with_uris_carries_exactly_those_uris() {
        let pki = TestPki::new();
        let two = pki.client_with_uris(&[
            "spiffe://cluster.local/ns/a/sa/x",
            "spiffe://cluster.local/ns/b/sa/y",
        ]);
        assert_eq!(
            uri_sans(&two.cert_der()),
            [
                "spiffe://cluster.local/ns/a/sa/x",
                "spiffe://cluster.local/ns/b/sa/y"
            ]
        );
        assert_eq!(two.spiffe_id(), None);
        verify_client(&pki, &two).unwrap();
        let one = pki.client_with_uris(&["spiffe://cluster.local/ns/a/sa/x"]);
        assert_eq!(one.spiffe_id(), Some("spiffe://cluster.local/ns/a/sa/x"));
        let der = one.cert_der();
        let x509 = parsed(&der);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(pki.client_with_uris(&["https://example.com/x"]).spiffe_id(), None);
    }

    #[test]
    fn fingerprint_is_lower_hex_sha256_of_the_der() {
        let cert = TestPki::new().workload("default", "alice");
        let fp = cert.sha256_fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{fp}");
        assert_eq!(fp, sha256_hex(&cert.cert_der()));
    }

    #[test]
    fn write_to_writes_the_pem_files() {
        let cert = TestPki::new().workload("default", "alice");
        let dir = std::env::temp_dir().join(format!("palisade-pki-{}", &cert.sha256_fingerprint()[..16]));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = cert.write_to(&dir, "alice").unwrap();
        assert_eq!(crt, dir.join("alice.crt"));
        assert_eq!(key, dir.join("alice.key"));
        assert_eq!(std::fs::read_to_string(&crt).unwrap(), cert.cert_pem());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), cert.key_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_shows_key_material() {
        let mut pki = TestPki::new();
        let cert = pki.workload("default", "alice");
        pki.revoke(&cert);
        let key_b64 = cert
            .key_pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>();
        for dbg in [format!("{pki:?}"), format!("{cert:?}")] {
            assert!(dbg.contains("key: <redacted>"), "{dbg}");
            assert!(!dbg.contains(&key_b64[36..68]), "{dbg}");
            assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
            assert!(!dbg.contains(&hex(&cert.key_der())[..32]), "{dbg}");
        }
        assert!(format!("{cert:?}").contains("spiffe://cluster.local/ns/default/sa/alice"));
    }

    #[test]
    fn pki_and_certs_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<TestPki>();
        shareable::<TestCert>();
    }
}
