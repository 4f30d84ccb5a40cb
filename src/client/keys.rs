//! The secret key file: how `dmrelay keygen` writes an Ed25519 seed and how every command that
//! signs reads it back.
//!
//! A public key and a seed are both 64 hex characters, so a bare-hex file cannot tell them apart
//! (issue 6: `dmrelay envelope --key alice.pub` signed as another identity). The file therefore
//! says what it is:
//!
//! ```text
//! # dmrelay secret key (Ed25519 seed). Keep it private: it reads this mailbox and signs as it.
//! # public key: 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c
//! dmrelay-secret-key-v1:0101010101010101010101010101010101010101010101010101010101010101
//! ```
//!
//! Reading: lines starting with `#` and blank lines are skipped; exactly one line must be
//! `dmrelay-secret-key-v1:` followed by 64 hex characters. Anything else is refused with a
//! sentence saying what was expected and how to make a key. A file of 64 bare hex characters is
//! either a public key or a secret key file written by dmrelay 0.1 (before this format): it is
//! refused, and the sentence explains how to convert an old key file (after checking, from the
//! public key it would have, that it really is one).

use crate::protocol::generate_signing_key;
use ed25519_dalek::SigningKey;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The prefix of the one line that holds the seed.
pub const SECRET_KEY_PREFIX: &str = "dmrelay-secret-key-v1:";

const HOW_TO_MAKE_ONE: &str = "make a key with `dmrelay keygen --out FILE`";

/// Why a secret key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Cannot read the key file {}: {source}.", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Cannot write the key file {}: {source}{}.", .path.display(),
        if .source.kind() == std::io::ErrorKind::AlreadyExists { " (use --force to replace it)" } else { "" })]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a secret key file; the text says what it holds instead and what to do.
    #[error("{} is not a dmrelay secret key file: {reason}", .path.display())]
    NotASecretKey { path: PathBuf, reason: String },
    /// No randomness to make a key from.
    #[error("No randomness available from the operating system: {0}.")]
    Randomness(String),
}

/// The text of a secret key file for `key` (the format in this module's documentation).
pub fn secret_key_file_text(key: &SigningKey) -> String {
    format!(
        "# dmrelay secret key (Ed25519 seed). Keep it private: it reads this mailbox and signs as it.\n\
         # public key: {}\n\
         {SECRET_KEY_PREFIX}{}\n",
        hex::encode(key.verifying_key().to_bytes()),
        hex::encode(key.to_bytes())
    )
}

/// Reads a secret key from the text of a key file; `Err` holds the reason, for
/// [`KeyError::NotASecretKey`].
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let expected = format!(
        "expected one line `{SECRET_KEY_PREFIX}` followed by 64 hex characters, as written by `dmrelay keygen`; {HOW_TO_MAKE_ONE}."
    );
    match lines.as_slice() {
        [] => Err(format!("the file holds no key; {expected}")),
        [line] => {
            if let Some(seed_hex) = line.strip_prefix(SECRET_KEY_PREFIX) {
                crate::protocol::signing_key_from_hex(seed_hex.trim()).ok_or_else(|| {
                    format!(
                        "the `{SECRET_KEY_PREFIX}` line does not hold 64 hex characters; {expected}"
                    )
                })
            } else if let Some(as_seed) = crate::protocol::signing_key_from_hex(line) {
                Err(bare_hex_reason(&as_seed))
            } else {
                Err(format!("it holds something else; {expected}"))
            }
        }
        _ => Err(format!("it holds more than one line of data; {expected}")),
    }
}

/// 64 bare hex characters: a public key, or a key file from before this format.
fn bare_hex_reason(as_seed: &SigningKey) -> String {
    format!(
        "it holds 64 bare hex characters, which is what a PUBLIC key looks like (a public key cannot sign or read a mailbox). \
         If it is instead a secret key file written by dmrelay 0.1, whose format has changed, and its public key is {} \
         (the key you published), convert it by writing `{SECRET_KEY_PREFIX}` in front of the hex; otherwise {HOW_TO_MAKE_ONE}.",
        hex::encode(as_seed.verifying_key().to_bytes())
    )
}

/// Loads the secret key file at `path`.
pub fn load_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_a_key = |reason: String| KeyError::NotASecretKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|_| {
        not_a_key(format!(
            "it is not text; expected the file written by `dmrelay keygen`; {HOW_TO_MAKE_ONE}."
        ))
    })?;
    parse_secret_key(&text).map_err(not_a_key)
}

/// Makes a new key and writes it to `path` (mode 0600, synced); `replace` allows overwriting
/// an existing file. Returns the key, whose public half the caller publishes.
pub fn generate_secret_key_file(path: &Path, replace: bool) -> Result<SigningKey, KeyError> {
    let key = generate_signing_key().map_err(|e| KeyError::Randomness(e.to_string()))?;
    write_private_file(path, secret_key_file_text(&key).as_bytes(), replace).map_err(|source| {
        KeyError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(key)
}

/// Writes a secret to `path` with mode 0600 and syncs it: created new, or replaced only with
/// `replace` (`AlreadyExists` otherwise). A replaced file gets 0600 too, since the mode given at
/// open only applies to a file that is created. Key files and `dmrelay init`'s node.toml use it.
pub fn write_private_file(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    #[test]
    fn a_key_file_round_trips() {
        let text = secret_key_file_text(&alice());
        assert!(text.contains("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"));
        let back = parse_secret_key(&text).unwrap();
        assert_eq!(back.to_bytes(), alice().to_bytes());
    }

    #[test]
    fn a_public_key_is_never_taken_for_a_secret_key() {
        let public = hex::encode(alice().verifying_key().to_bytes());
        for text in [
            public.clone(),
            format!("{public}\n"),
            format!("  {public}  \n\n"),
        ] {
            let reason = parse_secret_key(&text).unwrap_err();
            assert!(reason.contains("PUBLIC key"), "{reason}");
            assert!(reason.contains("dmrelay keygen --out FILE"), "{reason}");
        }
        // An old (0.1) bare seed file: refused too, with the public key it would have.
        let reason = parse_secret_key(&hex::encode([1u8; 32])).unwrap_err();
        assert!(reason.contains(&public), "{reason}");
        assert!(reason.contains(SECRET_KEY_PREFIX), "{reason}");
    }

    #[test]
    fn empty_garbage_and_bad_lines_are_refused_with_a_sentence() {
        for text in [
            "",
            "\n\n",
            "# only a comment\n",
            "hello",
            "dmrelay-secret-key-v1:abcd",
            "dmrelay-secret-key-v1:zz01010101010101010101010101010101010101010101010101010101010101",
            "dmrelay-secret-key-v2:0101010101010101010101010101010101010101010101010101010101010101",
        ] {
            let reason = parse_secret_key(text).unwrap_err();
            assert!(
                reason.contains("dmrelay keygen --out FILE"),
                "{text:?}: {reason}"
            );
        }
        let two = format!(
            "{}{}",
            secret_key_file_text(&alice()),
            secret_key_file_text(&alice())
        );
        assert!(
            parse_secret_key(&two)
                .unwrap_err()
                .contains("more than one")
        );
    }
}
