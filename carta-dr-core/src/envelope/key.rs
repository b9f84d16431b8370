//! Encryption keys and the per-object key derivation.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::format::{KEY_CHECK_LEN, SALT_LEN, TAG_LEN};
use crate::{Error, Result};

/// HKDF `info` for the per-object AES-256 key.
const INFO_OBJECT_KEY: &[u8] = b"carta-dr envelope v1 object key";
/// HKDF `info` for the key check value stored in the header.
const INFO_KEY_CHECK: &[u8] = b"carta-dr envelope v1 key check";
/// Domain of the key fingerprint shown to humans.
const FINGERPRINT_DOMAIN: &[u8] = b"carta-dr key fingerprint v1";

/// A 256-bit master key for envelope encryption.
///
/// Keys come from a key file ([`Key::from_file`]), an environment variable
/// ([`Key::from_env`]) or bytes ([`Key::from_bytes`]); never from the command line, where
/// they would show in `ps` and shell history. Text forms are 64 hex digits or the standard
/// base64 of 32 bytes (44 characters with padding); surrounding whitespace is ignored.
///
/// The bytes are zeroed on drop, and neither `Debug` nor any other method prints them:
/// `Debug` shows only [`Key::fingerprint`].
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; 32]>,
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Parses the text form: 64 hex digits, or base64 (standard alphabet, padded or not) of
    /// 32 bytes. `source` names where the text came from, for the error message.
    pub fn parse(source: &str, text: &str) -> Result<Key> {
        let t = text.trim();
        let err = |what: String| Error::Crypto {
            path: source.to_string(),
            what,
        };
        if t.is_empty() {
            return Err(err("key is empty".into()));
        }
        let mut out = Zeroizing::new([0u8; 32]);
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_to_slice(t, &mut out[..]).map_err(|e| err(format!("bad hex key: {e}")))?;
            return Ok(Key { bytes: out });
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .map_err(|_| {
                    err(format!(
                        "key must be 64 hex digits or the base64 of 32 bytes (got {} characters \
                         that are neither)",
                        t.len()
                    ))
                })?,
        );
        if decoded.len() != 32 {
            return Err(err(format!(
                "key must be 64 hex digits or the base64 of 32 bytes; this base64 text decodes \
                 to {} bytes",
                decoded.len()
            )));
        }
        out.copy_from_slice(&decoded);
        Ok(Key { bytes: out })
    }

    /// Reads a key file: its text form (hex or base64, see [`Key::parse`]), or exactly 32
    /// raw bytes. On Unix a file readable by group or others is accepted with a warning.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Key> {
        let path = path.as_ref();
        let source = format!("key file {}", path.display());
        let data = Zeroizing::new(std::fs::read(path).map_err(|e| Error::Crypto {
            path: source.clone(),
            what: format!("cannot read: {e}"),
        })?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        "{source} is accessible by group or others (mode {:o}); chmod 600 it",
                        meta.permissions().mode() & 0o777
                    );
                }
            }
        }
        if data.len() == 32 {
            // No text form is 32 bytes long (hex is 64 digits, base64 43 or 44 characters),
            // so a 32-byte file is the raw key.
            let mut b = [0u8; 32];
            b.copy_from_slice(&data);
            let k = Key::from_bytes(b);
            b.zeroize();
            return Ok(k);
        }
        match std::str::from_utf8(&data) {
            Ok(text) => Key::parse(&source, text),
            Err(_) => Err(Error::Crypto {
                path: source,
                what: format!(
                    "a key file holds 64 hex digits, the base64 of 32 bytes, or 32 raw bytes; \
                     this one has {} bytes of binary data",
                    data.len()
                ),
            }),
        }
    }

    /// Reads a key from environment variable `var` (hex or base64, see [`Key::parse`]).
    pub fn from_env(var: &str) -> Result<Key> {
        let source = format!("environment variable {var}");
        match std::env::var(var) {
            Ok(v) => {
                let v = Zeroizing::new(v);
                Key::parse(&source, &v)
            }
            Err(std::env::VarError::NotPresent) => Err(Error::Crypto {
                path: source,
                what: "not set".into(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Crypto {
                path: source,
                what: "not valid UTF-8 (expected hex or base64 text)".into(),
            }),
        }
    }

    /// A short public identifier of the key (16 hex digits of a domain-separated SHA-256),
    /// safe to log and print; it does not reveal the key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update(&self.bytes[..]);
        hex::encode(&h.finalize()[..8])
    }

    /// The AES-256-GCM cipher of one object and the header's key check value, both derived
    /// with HKDF-SHA-256 from this key and the object's random salt.
    pub(crate) fn derive(&self, salt: &[u8; SALT_LEN]) -> (ObjectCipher, [u8; KEY_CHECK_LEN]) {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.bytes[..]);
        let mut okm = Zeroizing::new([0u8; 32]);
        let mut check = [0u8; KEY_CHECK_LEN];
        // Both lengths are far below HKDF-SHA-256's limit of 255 * 32 bytes.
        let _ = hk.expand(INFO_OBJECT_KEY, &mut okm[..]);
        let _ = hk.expand(INFO_KEY_CHECK, &mut check);
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&okm[..]));
        (ObjectCipher { cipher }, check)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(fingerprint {})", self.fingerprint())
    }
}

/// The AEAD of one object.
pub(crate) struct ObjectCipher {
    cipher: Aes256Gcm,
}

impl ObjectCipher {
    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .map_err(|_| Error::Crypto {
                path: String::new(),
                what: "encryption failed (buffer too large for AES-GCM)".into(),
            })?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&tag);
        Ok(t)
    }

    /// Decrypts `buf` in place; `false` if the tag does not authenticate.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        if tag.len() != TAG_LEN {
            return false;
        }
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        let hex_text = hex::encode(bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let a = Key::parse("t", &format!("  {hex_text}\n")).unwrap();
        let b = Key::parse("t", &b64).unwrap();
        let c = Key::parse("t", b64.trim_end_matches('=')).unwrap();
        assert_eq!(a.bytes[..], bytes);
        assert_eq!(b.bytes[..], bytes);
        assert_eq!(c.bytes[..], bytes);
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn rejects_bad_keys_with_clear_errors() {
        for (text, needle) in [
            ("", "empty"),
            ("abcd", "64 hex digits or the base64"),
            (&"zz".repeat(32), "64 hex digits or the base64"),
            ("AAAA", "decodes to 3 bytes"),
        ] {
            let e = Key::parse("environment variable K", text).unwrap_err();
            let s = e.to_string();
            assert!(matches!(e, Error::Crypto { .. }), "{s}");
            assert!(s.contains(needle), "{s:?} lacks {needle:?}");
            assert!(s.contains("environment variable K"), "{s}");
        }
    }

    #[test]
    fn debug_does_not_print_key_bytes() {
        let k = Key::from_bytes([0xAB; 32]);
        let d = format!("{k:?}");
        assert!(!d.to_lowercase().contains("abab"), "{d}");
        assert!(!d.contains("171"), "{d}");
        assert!(d.contains(&k.fingerprint()));
    }

    #[test]
    fn from_file_accepts_text_and_raw() {
        let dir = std::env::temp_dir().join(format!("carta-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = [7u8; 32];
        let p1 = dir.join("hex");
        std::fs::write(&p1, format!("{}\n", hex::encode(bytes))).unwrap();
        let p2 = dir.join("raw");
        std::fs::write(&p2, bytes).unwrap();
        let p3 = dir.join("bad");
        std::fs::write(&p3, b"short").unwrap();
        assert_eq!(Key::from_file(&p1).unwrap().bytes[..], bytes);
        assert_eq!(Key::from_file(&p2).unwrap().bytes[..], bytes);
        let e = Key::from_file(&p3).unwrap_err().to_string();
        assert!(e.contains("key file") && e.contains("bad"), "{e}");
        let e = Key::from_file(dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_env_reads_and_reports_missing() {
        let var = format!("CARTA_DR_TEST_KEY_{}", std::process::id());
        assert!(Key::from_env(&var)
            .unwrap_err()
            .to_string()
            .contains("not set"));
        // Only this test touches this uniquely named variable.
        std::env::set_var(&var, hex::encode([9u8; 32]));
        assert_eq!(Key::from_env(&var).unwrap().bytes[..], [9u8; 32]);
        std::env::remove_var(&var);
    }

    #[test]
    fn derivation_depends_on_salt_and_key() {
        let k1 = Key::from_bytes([1; 32]);
        let k2 = Key::from_bytes([2; 32]);
        let (_, c1) = k1.derive(&[0; 16]);
        let (_, c2) = k1.derive(&[1; 16]);
        let (_, c3) = k2.derive(&[0; 16]);
        assert_ne!(c1, c2);
        assert_ne!(c1, c3);
    }
}
