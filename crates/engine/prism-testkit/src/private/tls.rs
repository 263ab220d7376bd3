//! Certificates for TLS tests: a certificate authority of the test's own, and server
//! certificates it signs for `127.0.0.1` and `localhost`.
//!
//! Made in process with the `openssl` crate, the same system OpenSSL the clients verify with:
//! no `openssl` command line (its flags differ between versions and it writes to stderr on
//! success), and no second crypto library just for tests. Keys are ECDSA P-256, which
//! PostgreSQL, Redis, the JVM (Kafka's PEM key store) and OpenSSL clients all accept, and fast
//! to generate.

use std::path::Path;

use anyhow::Context;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// How long generated certificates are valid (from a day back, for clock skew).
const VALID_DAYS: u32 = 30;

/// A certificate authority of one test.
pub struct TestCa {
    /// Its self-signed certificate.
    cert: X509,
    /// Its signing key.
    key: PKey<Private>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .map(|e| format!("{:?}", e.data()));
        f.debug_struct("TestCa").field("name", &name).finish_non_exhaustive()
    }
}

/// A server certificate and its key, PEM-encoded.
#[derive(Clone)]
pub struct ServerCert {
    /// The certificate (leaf only; the CA is the test's).
    pub cert_pem: Vec<u8>,
    /// The private key, unencrypted PKCS#8 (what Kafka's PEM key store requires).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Writes the certificate and the key (mode 0600) to `cert` and `key`.
    pub fn write(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        std::fs::write(cert, &self.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        write_private(key, &self.key_pem)
    }
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = new_key()?;
        let subject = subject(name)?;
        let mut builder = certificate_builder(&key)?;
        builder.set_subject_name(&subject)?;
        builder.set_issuer_name(&subject)?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
        let key_id = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(key_id)?;
        builder.sign(&key, MessageDigest::sha256())?;
        Ok(Self { cert: builder.build(), key })
    }

    /// The CA certificate, PEM-encoded: what clients are told to trust.
    pub fn cert_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.cert.to_pem()?)
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert_pem()?).with_context(|| format!("writing {}", path.display()))
    }

    /// A server certificate signed by this CA, for `127.0.0.1` and `localhost`.
    pub fn issue_localhost(&self, common_name: &str) -> anyhow::Result<ServerCert> {
        self.issue(common_name, &["localhost"], &["127.0.0.1"])
    }

    /// A server certificate signed by this CA naming `dns_names` and `ip_addresses` (and
    /// nothing else: a certificate for another host tests host name verification).
    pub fn issue(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ip_addresses: &[&str],
    ) -> anyhow::Result<ServerCert> {
        let key = new_key()?;
        let mut builder = certificate_builder(&key)?;
        let name = subject(common_name)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(self.cert.subject_name())?;
        builder.append_extension(BasicConstraints::new().critical().build()?)?;
        builder.append_extension(KeyUsage::new().critical().digital_signature().key_agreement().build()?)?;
        builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let mut names = SubjectAlternativeName::new();
        for dns in dns_names {
            names.dns(dns);
        }
        for ip in ip_addresses {
            names.ip(ip);
        }
        let names = names.build(&builder.x509v3_context(Some(&self.cert), None))?;
        builder.append_extension(names)?;
        let authority = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(Some(&self.cert), None))?;
        builder.append_extension(authority)?;
        builder.sign(&self.key, MessageDigest::sha256())?;
        Ok(ServerCert { cert_pem: builder.build().to_pem()?, key_pem: key.private_key_to_pem_pkcs8()? })
    }
}

fn new_key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn subject(common_name: &str) -> anyhow::Result<openssl::x509::X509Name> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Prism tests")?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    Ok(name.build())
}

/// A v3 certificate for `key` with a random serial, valid from a day ago for [`VALID_DAYS`].
fn certificate_builder(key: &PKey<Private>) -> anyhow::Result<X509Builder> {
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_pubkey(key)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let (not_before, not_after) = (Asn1Time::from_unix(now - 86_400)?, Asn1Time::days_from_now(VALID_DAYS)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    Ok(builder)
}

/// Writes a file only its owner may read.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    fn verifies(ca: &TestCa, cert: &ServerCert) -> X509VerifyResult {
        let mut store = X509StoreBuilder::new().expect("store");
        store.add_cert(ca.cert.clone()).expect("add");
        let store = store.build();
        let leaf = X509::from_pem(&cert.cert_pem).expect("leaf");
        let mut context = X509StoreContext::new().expect("context");
        context
            .init(&store, &leaf, &Stack::new().expect("stack"), |c| {
                c.verify_cert()?;
                Ok(c.error())
            })
            .expect("verify")
    }

    #[test]
    fn a_server_certificate_chains_to_its_ca_and_not_to_another() {
        let ca = TestCa::new("test ca").expect("ca");
        let other = TestCa::new("other ca").expect("other");
        let cert = ca.issue_localhost("server").expect("issue");
        assert_eq!(verifies(&ca, &cert), X509VerifyResult::OK);
        assert_ne!(verifies(&other, &cert), X509VerifyResult::OK);
        let key = String::from_utf8(cert.key_pem.clone()).expect("pem");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {key}");
    }
}
