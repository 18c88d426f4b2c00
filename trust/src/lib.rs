//! localml-trust: who may join a localml cluster and how its parts recognise each other,
//! as k3s does it: a cluster CA, join tokens that pin the CA's hash, and certificates
//! that name their holder. Pure functions (no I/O): the scheduler keeps the CA and the
//! tokens in its store, the worker keeps its certificate on disk.
//!
//! # Layout
//! - [`ca`]: the cluster CA: create it, reload it, issue server and client certificates,
//!   sign a worker's certificate signing request; read a certificate's identity back.
//! - [`token`]: join tokens `K10<ca-hash>::<id>.<secret>`: format, parse, hash.
//! - [`random_hex`], [`sha256_hex`], [`constant_time_eq`]: the primitives both use;
//!   [`Sha256Stream`] for files hashed as they are written or read (backups).

pub mod ca;
pub mod token;

use sha2::Digest;

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// sha256 over data that arrives in pieces (a file written or read as a stream).
#[derive(Clone, Default)]
pub struct Sha256Stream(sha2::Sha256);

impl Sha256Stream {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex sha256 of everything given so far.
    pub fn hex(&self) -> String {
        hex(&self.0.clone().finalize())
    }
}

/// Whether `text` names a sha256 as this crate writes them: 64 lower-case hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex sha256 of a file, read in 1 MiB pieces (never whole in memory).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.hex());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `n` random bytes from the operating system, as lowercase hex (2n characters).
pub fn random_hex(n: usize) -> Result<String, TrustError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| TrustError::Random(e.to_string()))?;
    Ok(hex(&bytes))
}

/// Compares two secrets' hashes in time independent of where they differ. Hand-written
/// (four lines) rather than a crate: the inputs are fixed-length hex digests.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What went wrong building or reading trust material. Messages never contain a secret
/// or a private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// Creating or signing a certificate failed (rcgen's reason).
    #[error("cannot create the certificate: {0}")]
    Certificate(String),
    /// A PEM certificate or key that does not parse.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A certificate signing request that does not parse or whose signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// A worker or operator name that cannot be a certificate's DNS name.
    #[error("invalid name '{0}': use lowercase letters, digits, '-' and '.' (at most 253 characters, like a Kubernetes node name)")]
    Name(String),
    /// A join token that does not parse; the reason never quotes the token.
    #[error("malformed join token: {0}")]
    Token(&'static str),
}

/// A secret given on the command line or in a file (a join token): `Debug` and `Display`
/// print `<redacted>`, so a config or flags dump never shows it; [`Secret::expose`] is the
/// one way to read it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_hash_equals_the_hash_of_the_whole() {
        let mut stream = Sha256Stream::default();
        stream.update(b"localml-");
        assert_eq!(
            stream.hex(),
            sha256_hex(b"localml-"),
            "hex() can be read midway"
        );
        stream.update(b"backup");
        assert_eq!(stream.hex(), sha256_hex(b"localml-backup"));
    }
}
