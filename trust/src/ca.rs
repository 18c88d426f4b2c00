//! The cluster CA and the certificates it issues.
//!
//! Every certificate names its holder in the subject's common name and its role in the
//! organisation (`localml:worker`, `localml:scheduler`, `localml:operator`); a worker's
//! certificate also carries its name as a DNS name, so whoever dials the worker checks
//! that the server at the registered address is that worker. Validity windows start a
//! day early: PCs on an offline LAN may have no time server.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TrustError;

/// How far back `not_before` is set, so a PC whose clock runs behind accepts a
/// certificate at once.
pub const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// The CA's validity (k3s: 10 years). Rotation is described in docs/security.md.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates of workers, schedulers and operators (k3s: one year, renewed when a
/// third is left).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Who holds a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker PC: may report on the cluster port under its own name.
    Worker,
    /// A scheduler replica: dials workers.
    Scheduler,
    /// An operator's tool (`localml certs issue`): may call workers directly.
    Operator,
}

impl Role {
    fn organization(self) -> &'static str {
        match self {
            Role::Worker => "localml:worker",
            Role::Scheduler => "localml:scheduler",
            Role::Operator => "localml:operator",
        }
    }

    fn from_organization(text: &str) -> Option<Role> {
        [Role::Worker, Role::Scheduler, Role::Operator]
            .into_iter()
            .find(|r| r.organization() == text)
    }
}

/// A certificate with the private key that goes with it, both PEM. `Debug` leaves the
/// key out.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster CA: its certificate and the key that signs.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn cert_error(e: rcgen::Error) -> TrustError {
    TrustError::Certificate(e.to_string())
}

fn window(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

fn serial(params: &mut CertificateParams) -> Result<(), TrustError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TrustError::Random(e.to_string()))?;
    bytes[0] &= 0x7f; // positive
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
    Ok(())
}

/// Whether `name` may be a worker's or operator's certificate name: a lowercase DNS name
/// (letters, digits, '-', '.'), as Kubernetes node names are. Lowercase only: TLS compares
/// names without case, so `PC-1` and `pc-1` must not be two workers.
pub fn validate_name(name: &str) -> Result<(), TrustError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(TrustError::Name(name.chars().take(80).collect()));
    }
    Ok(())
}

fn leaf_params(
    name: &str,
    role: Role,
    sans: Vec<SanType>,
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateParams, TrustError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, role.organization());
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    window(&mut params, now, validity);
    serial(&mut params)?;
    Ok(params)
}

fn dns(name: &str) -> Result<SanType, TrustError> {
    Ok(SanType::DnsName(name.try_into().map_err(|_| {
        TrustError::Name(name.chars().take(80).collect())
    })?))
}

/// A host or address for a server certificate: an IP address SAN or a DNS name SAN.
fn san(entry: &str) -> Result<SanType, TrustError> {
    match entry.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => dns(entry),
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256) valid from a day before `now` for [`CA_VALIDITY`].
    pub fn generate(now: SystemTime) -> Result<ClusterCa, TrustError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localml cluster CA");
        dn.push(DnType::OrganizationName, "localml");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        window(&mut params, now, CA_VALIDITY);
        serial(&mut params)?;
        let cert = params.self_signed(&key).map_err(cert_error)?;
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA as stored: its certificate and key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TrustError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TrustError::Invalid {
            what: "CA key",
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| TrustError::Invalid {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate, PEM, exactly as served to workers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM: for the store only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Lowercase hex sha256 of [`ClusterCa::cert_pem`]: what join tokens pin.
    pub fn hash(&self) -> String {
        crate::sha256_hex(self.cert_pem.as_bytes())
    }

    /// A certificate and key for a scheduler replica's TLS listener and for dialing
    /// workers; `hosts` (names and addresses) become its subject alternative names.
    pub fn issue_scheduler(
        &self,
        name: &str,
        hosts: &[String],
        now: SystemTime,
    ) -> Result<Issued, TrustError> {
        let mut sans = Vec::new();
        for host in hosts {
            let s = san(host)?;
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
        self.issue(name, Role::Scheduler, sans, now)
    }

    /// A client certificate and key for an operator's tool (`localml certs issue`).
    pub fn issue_operator(&self, name: &str, now: SystemTime) -> Result<Issued, TrustError> {
        validate_name(name)?;
        self.issue(name, Role::Operator, vec![dns(name)?], now)
    }

    fn issue(
        &self,
        name: &str,
        role: Role,
        sans: Vec<SanType>,
        now: SystemTime,
    ) -> Result<Issued, TrustError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let params = leaf_params(name, role, sans, now, LEAF_VALIDITY)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a worker's certificate signing request for the worker `name`, valid for
    /// `validity` from `now` (and backdated). Only the request's public key is used (what
    /// it asks for is ignored): the certificate names `name`, as a worker, and nothing
    /// else.
    pub fn sign_worker(
        &self,
        csr_pem: &str,
        name: &str,
        now: SystemTime,
        validity: Duration,
    ) -> Result<String, TrustError> {
        validate_name(name)?;
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TrustError::Csr(e.to_string()))?;
        let signed = CertificateSigningRequestParams {
            params: leaf_params(name, Role::Worker, vec![dns(name)?], now, validity)?,
            public_key: request.public_key,
        };
        Ok(signed.signed_by(&self.issuer).map_err(cert_error)?.pem())
    }
}

/// A new key pair and a certificate signing request for `name` (the worker's side):
/// the key never leaves the worker.
pub fn certificate_request(name: &str) -> Result<Issued, TrustError> {
    certificate_request_with_key(name, None)
}

/// As [`certificate_request`], for the key in `key_pem` when given (a worker that joins
/// again with the key its name is bound to).
pub fn certificate_request_with_key(
    name: &str,
    key_pem: Option<&str>,
) -> Result<Issued, TrustError> {
    validate_name(name)?;
    let key = match key_pem {
        Some(pem) => KeyPair::from_pem(pem).map_err(cert_error)?,
        None => KeyPair::generate().map_err(cert_error)?,
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(cert_error)?;
    Ok(Issued {
        cert_pem: csr.pem().map_err(cert_error)?,
        key_pem: key.serialize_pem(),
    })
}

/// The sha256 (hex) of the public key a certificate signing request is for; the request's
/// signature is checked, so whoever sent it holds the key.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, TrustError> {
    let request = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| TrustError::Csr(e.to_string()))?;
    use rcgen::PublicKeyData;
    Ok(crate::sha256_hex(request.public_key.der_bytes()))
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The subject's common name: the worker's (or scheduler's, operator's) name.
    pub name: String,
    /// `None` for a certificate this CA did not issue for a role.
    pub role: Option<Role>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Holder {
    /// When the certificate was issued (its `not_before` plus the backdating).
    pub fn issued_at(&self) -> SystemTime {
        self.not_before + BACKDATE
    }

    /// When to renew: once two thirds of the validity from issue (not counting the
    /// backdating) have passed, as k3s does.
    pub fn renewal_due(&self) -> SystemTime {
        let issued = self.issued_at();
        let total = self.not_after.duration_since(issued).unwrap_or_default();
        issued + total * 2 / 3
    }

    /// Whether less than a third of the validity is left at `now` (renew then).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renewal_due()
    }
}

fn at(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

/// Reads the holder of a DER certificate (as TLS presents it).
pub fn holder(der: &[u8]) -> Result<Holder, TrustError> {
    let invalid = |reason: String| TrustError::Invalid {
        what: "certificate",
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
    let subject = cert.subject();
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name =
        text(subject.iter_common_name().next()).ok_or_else(|| invalid("no common name".into()))?;
    let role = text(subject.iter_organization().next())
        .as_deref()
        .and_then(Role::from_organization);
    let validity = cert.validity();
    Ok(Holder {
        name,
        role,
        not_before: at(validity.not_before.timestamp()),
        not_after: at(validity.not_after.timestamp()),
    })
}

/// Reads the holder of the first certificate in `pem`.
pub fn holder_pem(pem: &str) -> Result<Holder, TrustError> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| TrustError::Invalid {
            what: "certificate PEM",
            reason: e.to_string(),
        })?;
    holder(&block.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_reloaded_ca_keeps_its_hash_and_signs_workers() {
        let ca = ClusterCa::generate(now()).expect("ca");
        assert_eq!(ca.hash().len(), 64);
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        assert_eq!(again.hash(), ca.hash());
        let request = certificate_request("pc-3").expect("csr");
        let cert = again
            .sign_worker(&request.cert_pem, "pc-3", now(), LEAF_VALIDITY)
            .expect("signed");
        let h = holder_pem(&cert).expect("holder");
        assert_eq!(h.name, "pc-3");
        assert_eq!(h.role, Some(Role::Worker));
        assert!(!h.needs_renewal(now()));
        assert!(h.needs_renewal(now() + LEAF_VALIDITY - LEAF_VALIDITY / 4));
        let skew = now()
            .duration_since(h.not_before)
            .expect("not_before in the past");
        assert!(skew >= BACKDATE - Duration::from_secs(5), "{skew:?}");
    }

    #[test]
    fn short_lived_certificates_are_renewed_after_two_thirds_not_counting_the_backdating() {
        let ca = ClusterCa::generate(now()).expect("ca");
        let request = certificate_request("pc-3").expect("csr");
        let issued = now();
        let cert = ca
            .sign_worker(&request.cert_pem, "pc-3", issued, Duration::from_secs(30))
            .expect("signed");
        let h = holder_pem(&cert).expect("holder");
        // Whole seconds in the certificate.
        assert!(!h.needs_renewal(issued + Duration::from_secs(18)));
        assert!(h.needs_renewal(issued + Duration::from_secs(21)));
        assert!(h.needs_renewal(issued + Duration::from_secs(3600)));
    }

    #[test]
    fn the_worker_name_comes_from_the_scheduler_not_the_request() {
        let ca = ClusterCa::generate(now()).expect("ca");
        let request = certificate_request("someone-else").expect("csr");
        let cert = ca
            .sign_worker(&request.cert_pem, "pc-3", now(), LEAF_VALIDITY)
            .expect("signed");
        assert_eq!(holder_pem(&cert).expect("holder").name, "pc-3");
    }

    #[test]
    fn garbage_requests_and_names_are_errors() {
        let ca = ClusterCa::generate(now()).expect("ca");
        let err = ca
            .sign_worker("not a csr", "pc-3", now(), LEAF_VALIDITY)
            .expect_err("garbage");
        assert!(matches!(err, TrustError::Csr(_)), "{err}");
        let request = certificate_request("pc-3").expect("csr");
        // One base64 character of the body changed: the signature no longer verifies.
        let mut lines: Vec<String> = request.cert_pem.lines().map(str::to_string).collect();
        let body = &mut lines[1];
        let c = if body.as_bytes()[40] == b'A' {
            "B"
        } else {
            "A"
        };
        body.replace_range(40..41, c);
        let broken = lines.join("\n");
        assert!(ca
            .sign_worker(&broken, "pc-3", now(), LEAF_VALIDITY)
            .is_err());
        for bad in ["", "a b", "-x", "x_y", "PC-3", &"a".repeat(300)] {
            assert!(validate_name(bad).is_err(), "{bad}");
            assert!(ca
                .sign_worker(&request.cert_pem, bad, now(), LEAF_VALIDITY)
                .is_err());
        }
        assert!(validate_name("w1").is_ok());
        assert!(validate_name("pc-3.lan").is_ok());
    }

    #[test]
    fn scheduler_and_operator_certificates_say_their_role() {
        let ca = ClusterCa::generate(now()).expect("ca");
        let hosts = ["127.0.0.1".to_string(), "localhost".into(), "::1".into()];
        let s = ca
            .issue_scheduler("scheduler", &hosts, now())
            .expect("issued");
        assert_eq!(
            holder_pem(&s.cert_pem).expect("h").role,
            Some(Role::Scheduler)
        );
        let o = ca.issue_operator("bench", now()).expect("issued");
        assert_eq!(
            holder_pem(&o.cert_pem).expect("h").role,
            Some(Role::Operator)
        );
        assert!(!format!("{o:?}").contains("PRIVATE KEY"));
        assert!(ClusterCa::from_pem(ca.cert_pem(), "junk").is_err());
    }
}
