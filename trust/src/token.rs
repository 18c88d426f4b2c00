//! Join tokens, in k3s's format: `K10<ca-hash>::<id>.<secret>`. The hash is the lowercase
//! hex sha256 of the CA certificate's PEM bytes as the scheduler serves them, so a worker
//! that holds a token can tell the real scheduler from an impostor before it sends
//! anything secret. The scheduler stores only [`hash_secret`] of the secret.

use crate::TrustError;

/// The token format's prefix (k3s: "K10" for a token that carries the CA hash).
pub const PREFIX: &str = "K10";
/// Characters of a token id (hex).
pub const ID_LEN: usize = 6;
/// Characters of a token secret (hex: 128 bits).
pub const SECRET_LEN: usize = 32;

/// A parsed join token. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex sha256 of the CA certificate's PEM.
    pub ca_hash: String,
    /// Public id (what `localml token list` shows and `revoke` takes).
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    /// A new token for the CA whose PEM hashes to `ca_hash`, with a random id and secret.
    pub fn generate(ca_hash: &str) -> Result<JoinToken, TrustError> {
        Ok(JoinToken {
            ca_hash: ca_hash.to_string(),
            id: crate::random_hex(ID_LEN / 2)?,
            secret: crate::random_hex(SECRET_LEN / 2)?,
        })
    }

    /// The text to hand to a worker (`--token`). Holds the secret: print it once, never log it.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}::{}.{}", self.ca_hash, self.id, self.secret)
    }

    /// What the scheduler stores and compares: the secret's sha256 (the secret has 128
    /// random bits, so a fast hash is enough).
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    /// Parses a token; errors say which part is malformed, never quoting the token.
    pub fn parse(text: &str) -> Result<JoinToken, TrustError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(TrustError::Token("it does not start with K10"))?;
        let (hash, credentials) = rest
            .split_once("::")
            .ok_or(TrustError::Token("no '::' after the CA hash"))?;
        if hash.len() != 64 || !is_hex(hash) {
            return Err(TrustError::Token(
                "the CA hash is not 64 lowercase hex characters",
            ));
        }
        let (id, secret) = credentials
            .split_once('.')
            .ok_or(TrustError::Token("no '.' between the token id and secret"))?;
        if id.len() != ID_LEN || !is_hex(id) {
            return Err(TrustError::Token(
                "the token id is not 6 lowercase hex characters",
            ));
        }
        if secret.len() != SECRET_LEN || !is_hex(secret) {
            return Err(TrustError::Token(
                "the secret is not 32 lowercase hex characters",
            ));
        }
        Ok(JoinToken {
            ca_hash: hash.to_string(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// sha256 of a token secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    crate::sha256_hex(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn generated_tokens_round_trip() {
        let token = JoinToken::generate(HASH).expect("token");
        let text = token.reveal();
        assert!(
            text.starts_with(&format!("K10{HASH}::{}.", token.id)),
            "{text}"
        );
        let parsed = JoinToken::parse(&format!("  {text}\n")).expect("parses");
        assert_eq!(parsed, token);
        assert_eq!(parsed.secret_hash(), token.secret_hash());
        assert_ne!(JoinToken::generate(HASH).expect("token").id, "");
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong_without_the_secret() {
        let secret = "fedcba9876543210fedcba9876543210";
        let cases = [
            (format!("X10{HASH}::abc123.{secret}"), "K10"),
            (format!("K10{HASH}abc123.{secret}"), "'::'"),
            (format!("K10{}::abc123.{secret}", &HASH[1..]), "CA hash"),
            (
                format!("K10{}::abc123.{secret}", HASH.to_uppercase()),
                "CA hash",
            ),
            (format!("K10{HASH}::abc123{secret}"), "'.'"),
            (format!("K10{HASH}::abc12.{secret}"), "token id"),
            (format!("K10{HASH}::abc123.{}", &secret[1..]), "secret"),
            (format!("K10{HASH}::abc123.{}zz", &secret[2..]), "secret"),
            (String::new(), "K10"),
        ];
        for (text, expected) in cases {
            let err = JoinToken::parse(&text).expect_err(&text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(
                !err.contains(&secret[4..]),
                "the error quotes the secret: {err}"
            );
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = JoinToken::generate(HASH).expect("token");
        let secret = token
            .reveal()
            .rsplit('.')
            .next()
            .expect("secret")
            .to_string();
        assert!(!format!("{token:?}").contains(&secret));
    }
}
