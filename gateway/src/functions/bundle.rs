//! Deploy bundles: the bytes a deploy carries (manifest + module), their two
//! formats, ed25519 signing and the trust check against
//! `functions.trusted_keys`.
//!
//! [`parse`] is a pure function over untrusted bytes: it never panics,
//! never allocates in proportion to what the header claims, and checks
//! everything it can without knowing the gateway (structure, lengths, the
//! content hash, the signature against the key the bundle names). What
//! only the gateway knows, which keys it trusts, is [`check_trust`].
//!
//! # Format 1 (unsigned)
//!
//! ```text
//! offset  size  content
//! 0       4     magic "PRCH"
//! 4       1     format: 1
//! 5       4     manifest length M, u32 big-endian
//! 9       M     the manifest, UTF-8 TOML (sdk/ABI.md, "Manifest")
//! 9+M     rest  the WebAssembly module
//! ```
//!
//! Format 1 has no module length, so a bundle cut inside the module is only
//! caught by the module's parser. Gateways with `trusted_keys` refuse it.
//!
//! # Format 2 (signed)
//!
//! ```text
//! offset     size  content
//! 0          4     magic "PRCH"
//! 4          1     format: 2
//! 5          4     manifest length M, u32 big-endian
//! 9          4     module length W, u32 big-endian
//! 13         32    content hash: SHA-256 of manifest ‖ module
//! 45         M     the manifest, UTF-8 TOML
//! 45+M       W     the WebAssembly module
//! 45+M+W     32    the signer's ed25519 public key
//! 77+M+W     64    ed25519 signature (RFC 8032) of SIGNING_CONTEXT ‖ bytes 0..45
//! 141+M+W          end: the bundle is exactly this long
//! ```
//!
//! The signature covers the 45-byte header (magic, format, both lengths,
//! the content hash) behind a fixed context string, so it binds the exact
//! manifest and module through the hash without the signer hashing 4 MiB
//! twice, and a perch signature cannot be replayed as anything else's.
//! A bundle whose header was changed fails the signature; one whose manifest
//! or module was changed fails the hash; one cut short fails the lengths.
//!
//! Keys are written `ed25519:<base64 of the 32-byte public key>` (standard
//! alphabet, padded), the form `trusted_keys` takes and `perch key generate`
//! prints. Private keys are PKCS#8 PEM files (`-----BEGIN PRIVATE KEY-----`),
//! so `openssl genpkey -algorithm ed25519` keys work too.

use base64ct::{Base64, Encoding};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use super::control::BUNDLE_MAGIC;

/// The unsigned format.
pub const FORMAT_UNSIGNED: u8 = 1;
/// The signed format.
pub const FORMAT_SIGNED: u8 = 2;
/// What the signature signs in front of the header.
pub const SIGNING_CONTEXT: &[u8] = b"perch bundle signature v2\0";
const V1_HEADER: usize = 9;
const V2_HEADER: usize = 45;
const KEY_LEN: usize = 32;
const SIG_LEN: usize = 64;
/// Bytes after the module in format 2: key and signature.
pub const SIGNATURE_BLOCK: usize = KEY_LEN + SIG_LEN;

/// A parsed bundle, borrowing from the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// 1 or 2.
    pub format: u8,
    pub manifest: &'a str,
    pub wasm: &'a [u8],
    /// The key that signed it (format 2); its signature and content hash
    /// were verified by [`parse`].
    pub signer: Option<PublicKey>,
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl std::fmt::Display for PublicKey {
    /// `ed25519:<base64>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", Base64::encode_string(&self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    /// Reads `ed25519:<base64>`.
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        let Some(b64) = s.trim().strip_prefix("ed25519:") else {
            return Err(KeyError::PublicForm(s.to_owned()));
        };
        let bytes = Base64::decode_vec(b64).map_err(|_| KeyError::PublicForm(s.to_owned()))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::PublicForm(s.to_owned()))?;
        Ok(PublicKey(key))
    }
}

/// Why a bundle was refused. Each says what is wrong and what to do; the
/// gateway sends it back as the deploy's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the deploy payload is not a perch bundle (it does not start with \"PRCH\"); \
         deploy with `perch fn deploy FILE.wasm --manifest FILE.toml`, which builds the bundle"
    )]
    NotABundle,
    #[error(
        "the bundle has format version {0}; this gateway reads 1 (unsigned) and 2 (signed): \
         use a `perch` of the same release as the gateway to build it"
    )]
    Format(u8),
    #[error(
        "the bundle is cut short: {expected} bytes were announced by its header but it is {actual} \
         bytes long; send the whole file again (was the upload interrupted or the file copied \
         only in part?)"
    )]
    Truncated { expected: usize, actual: usize },
    #[error(
        "the bundle has {0} bytes after its signature; a signed bundle ends with its signature: \
         it was not made by `perch fn sign` or was changed afterwards. Sign it again"
    )]
    TrailingBytes(usize),
    #[error("the manifest in the bundle is not UTF-8 text")]
    ManifestNotText,
    #[error(
        "the bundle was altered after it was signed: its manifest and module do not match the \
         content hash it was signed with; sign the original files again with `perch fn sign`"
    )]
    HashMismatch,
    #[error(
        "the bundle's signature does not verify with the key it names ({0}): the bundle was \
         altered after it was signed, or the signature is damaged; sign it again with \
         `perch fn sign`"
    )]
    BadSignature(PublicKey),
    #[error(
        "this gateway accepts only signed bundles (functions.trusted_keys is set) and this one \
         is unsigned; sign it with `perch fn sign FILE.wasm --manifest FILE.toml --key KEY`, or \
         deploy with `perch fn deploy ... --key KEY`"
    )]
    Unsigned,
    #[error(
        "the bundle is signed by {0}, which is not one of this gateway's functions.trusted_keys; \
         sign it with a trusted key, or add that public key to trusted_keys on the gateway"
    )]
    UntrustedKey(PublicKey),
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0:?} is not an ed25519 public key; write it as `ed25519:` followed by the base64 of \
         the 32-byte key, as `perch key generate` prints it"
    )]
    PublicForm(String),
    #[error(
        "{path} is not an ed25519 private key ({why}); it should be the PEM file \
         `perch key generate --out FILE` writes (or `openssl genpkey -algorithm ed25519`)"
    )]
    Private { path: String, why: String },
    #[error("cannot read the private key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Reads a bundle without trusting it: structure, lengths, UTF-8, and for
/// format 2 the signature against the key it names and the content hash.
pub fn parse(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    if bytes.len() < 5 || &bytes[..4] != BUNDLE_MAGIC {
        return Err(BundleError::NotABundle);
    }
    match bytes[4] {
        FORMAT_UNSIGNED => parse_v1(bytes),
        FORMAT_SIGNED => parse_v2(bytes),
        other => Err(BundleError::Format(other)),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    let len = u32_at(bytes, 5)? as usize;
    let end = V1_HEADER.saturating_add(len);
    if end > bytes.len() {
        return Err(BundleError::Truncated {
            expected: end,
            actual: bytes.len(),
        });
    }
    let manifest =
        std::str::from_utf8(&bytes[V1_HEADER..end]).map_err(|_| BundleError::ManifestNotText)?;
    Ok(Bundle {
        format: FORMAT_UNSIGNED,
        manifest,
        wasm: &bytes[end..],
        signer: None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    let m = u32_at(bytes, 5)? as usize;
    let w = u32_at(bytes, 9)? as usize;
    let content_end = V2_HEADER.saturating_add(m).saturating_add(w);
    let expected = content_end.saturating_add(SIGNATURE_BLOCK);
    if bytes.len() < expected {
        return Err(BundleError::Truncated {
            expected,
            actual: bytes.len(),
        });
    }
    if bytes.len() > expected {
        return Err(BundleError::TrailingBytes(bytes.len() - expected));
    }
    let mut key = [0; KEY_LEN];
    key.copy_from_slice(&bytes[content_end..content_end + KEY_LEN]);
    let signer = PublicKey(key);
    let signature = &bytes[content_end + KEY_LEN..];
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + V2_HEADER);
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(&bytes[..V2_HEADER]);
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&message, signature)
        .map_err(|_| BundleError::BadSignature(signer))?;
    let manifest = &bytes[V2_HEADER..V2_HEADER + m];
    let wasm = &bytes[V2_HEADER + m..content_end];
    if content_hash(manifest, wasm) != bytes[13..V2_HEADER] {
        return Err(BundleError::HashMismatch);
    }
    let manifest = std::str::from_utf8(manifest).map_err(|_| BundleError::ManifestNotText)?;
    Ok(Bundle {
        format: FORMAT_SIGNED,
        manifest,
        wasm,
        signer: Some(signer),
    })
}

/// The big-endian u32 at `at`, or "truncated" when the header stops first.
fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BundleError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(BundleError::Truncated {
            expected: at + 4,
            actual: bytes.len(),
        })
}

fn content_hash(manifest: &[u8], wasm: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(manifest);
    h.update(wasm);
    h.finalize().into()
}

/// Refuses what a gateway with `trusted` keys must not run: with no
/// trusted keys anything [`parse`] accepted is fine; with some, only a
/// bundle signed by one of them.
pub fn check_trust(bundle: &Bundle<'_>, trusted: &[PublicKey]) -> Result<(), BundleError> {
    if trusted.is_empty() {
        return Ok(());
    }
    match bundle.signer {
        None => Err(BundleError::Unsigned),
        Some(key) if trusted.contains(&key) => Ok(()),
        Some(key) => Err(BundleError::UntrustedKey(key)),
    }
}

/// Parses `trusted_keys` entries; the config check reports the bad ones.
pub fn parse_keys(keys: &[String]) -> Result<Vec<PublicKey>, KeyError> {
    keys.iter().map(|k| k.parse()).collect()
}

/// A private signing key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new random key and its PKCS#8 PEM text.
    pub fn generate() -> (SigningKey, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the system random generator works (ring reads getrandom)");
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just generated parses");
        (SigningKey(pair), pem(pkcs8.as_ref()))
    }

    /// Reads a PKCS#8 PEM private key file.
    pub fn load(path: &std::path::Path) -> Result<SigningKey, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        SigningKey::from_pem(&text).map_err(|why| KeyError::Private { path: shown, why })
    }

    /// Reads PKCS#8 PEM text.
    pub fn from_pem(text: &[u8]) -> Result<SigningKey, String> {
        let mut reader = text;
        let der = match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::Pkcs8Key(der))) => der,
            Ok(Some(_)) => return Err("the PEM block is not a PKCS#8 private key".into()),
            Ok(None) => return Err("no PEM block found".into()),
            Err(e) => return Err(format!("not PEM: {e:?}")),
        };
        // maybe_unchecked: OpenSSL writes PKCS#8 v1 (no public key inside).
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map(SigningKey)
            .map_err(|e| format!("not an ed25519 key: {e}"))
    }

    pub fn public(&self) -> PublicKey {
        let mut key = [0; KEY_LEN];
        key.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(key)
    }

    /// Builds a signed (format 2) bundle.
    pub fn sign(&self, manifest: &str, wasm: &[u8]) -> Result<Vec<u8>, SignError> {
        let m = u32::try_from(manifest.len()).map_err(|_| SignError::TooLarge)?;
        let w = u32::try_from(wasm.len()).map_err(|_| SignError::TooLarge)?;
        let mut out = Vec::with_capacity(V2_HEADER + manifest.len() + wasm.len() + SIGNATURE_BLOCK);
        out.extend_from_slice(BUNDLE_MAGIC);
        out.push(FORMAT_SIGNED);
        out.extend_from_slice(&m.to_be_bytes());
        out.extend_from_slice(&w.to_be_bytes());
        out.extend_from_slice(&content_hash(manifest.as_bytes(), wasm));
        let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + V2_HEADER);
        message.extend_from_slice(SIGNING_CONTEXT);
        message.extend_from_slice(&out);
        let signature = self.0.sign(&message);
        out.extend_from_slice(manifest.as_bytes());
        out.extend_from_slice(wasm);
        out.extend_from_slice(&self.public().0);
        out.extend_from_slice(signature.as_ref());
        Ok(out)
    }
}

/// A bundle that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the manifest or module is larger than 4 GiB, which a bundle cannot carry")]
    TooLarge,
}

/// PKCS#8 DER as a PEM "PRIVATE KEY" block.
fn pem(der: &[u8]) -> String {
    let b64 = Base64::encode_string(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "name = \"x\"\nversion = \"1.0.0\"\n";
    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn a_signed_bundle_round_trips_and_is_trusted_by_its_key_only() {
        let (key, pem_text) = SigningKey::generate();
        let bundle = key.sign(MANIFEST, WASM).unwrap();
        assert_eq!(bundle.len(), 45 + MANIFEST.len() + WASM.len() + 96);
        let parsed = parse(&bundle).unwrap();
        assert_eq!(parsed.format, 2);
        assert_eq!(parsed.manifest, MANIFEST);
        assert_eq!(parsed.wasm, WASM);
        assert_eq!(parsed.signer, Some(key.public()));
        check_trust(&parsed, &[key.public()]).unwrap();
        check_trust(&parsed, &[]).unwrap();
        let (other, _) = SigningKey::generate();
        let err = check_trust(&parsed, &[other.public()]).unwrap_err();
        assert_eq!(err, BundleError::UntrustedKey(key.public()));
        assert!(err.to_string().contains(&key.public().to_string()), "{err}");
        // The PEM reads back as the same key.
        let again = SigningKey::from_pem(pem_text.as_bytes()).unwrap();
        assert_eq!(again.public(), key.public());
    }

    #[test]
    fn public_keys_print_and_parse_as_trusted_keys_takes_them() {
        let (key, _) = SigningKey::generate();
        let text = key.public().to_string();
        assert!(
            text.starts_with("ed25519:") && text.len() == 8 + 44,
            "{text}"
        );
        assert_eq!(text.parse::<PublicKey>().unwrap(), key.public());
        for bad in ["", "ed25519:", "ed25519:AAAA", "rsa:AAAA", "ed25519:!!"] {
            let err = bad.parse::<PublicKey>().unwrap_err().to_string();
            assert!(err.contains("is not an ed25519 public key"), "{err}");
        }
    }

    #[test]
    fn every_changed_byte_of_a_signed_bundle_is_refused() {
        let (key, _) = SigningKey::generate();
        let bundle = key.sign(MANIFEST, WASM).unwrap();
        for i in 0..bundle.len() {
            let mut b = bundle.clone();
            b[i] ^= 0x01;
            let err = parse(&b).expect_err(&format!("byte {i} flipped was accepted"));
            let expected = match i {
                0..=3 => matches!(err, BundleError::NotABundle),
                4 => matches!(err, BundleError::Format(3)),
                5..=12 => matches!(
                    err,
                    BundleError::Truncated { .. } | BundleError::TrailingBytes(_)
                ),
                13..=44 => matches!(err, BundleError::BadSignature(_)),
                i if i < 45 + MANIFEST.len() + WASM.len() => err == BundleError::HashMismatch,
                _ => matches!(err, BundleError::BadSignature(_)),
            };
            assert!(expected, "byte {i}: {err}");
        }
    }

    #[test]
    fn unsigned_cut_and_padded_bundles_say_what_is_wrong() {
        let (key, _) = SigningKey::generate();
        let bundle = key.sign(MANIFEST, WASM).unwrap();
        for cut in [3, 5, 12, 44, 50, bundle.len() - 97, bundle.len() - 1] {
            let err = parse(&bundle[..cut]).unwrap_err();
            assert!(
                matches!(err, BundleError::Truncated { .. } | BundleError::NotABundle),
                "cut at {cut}: {err}"
            );
        }
        let err = parse(&bundle[..bundle.len() - 10]).unwrap_err().to_string();
        assert!(err.contains("cut short"), "{err}");
        assert!(err.contains(&format!("{} bytes", bundle.len())), "{err}");
        let mut padded = bundle.clone();
        padded.extend_from_slice(b"xx");
        let err = parse(&padded).unwrap_err().to_string();
        assert!(err.contains("2 bytes after its signature"), "{err}");

        let v1 = super::super::control::encode_bundle(MANIFEST, WASM);
        let parsed = parse(&v1).unwrap();
        assert_eq!((parsed.format, parsed.signer), (1, None));
        let err = check_trust(&parsed, &[key.public()]).unwrap_err();
        assert_eq!(err, BundleError::Unsigned);
        assert!(err.to_string().contains("perch fn sign"), "{err}");
        let err = parse(b"PRCH\x01\0\0\0\x10abc").unwrap_err();
        assert_eq!(
            err,
            BundleError::Truncated {
                expected: 25,
                actual: 12
            }
        );
        assert_eq!(parse(b"\0asm\x01\0\0\0"), Err(BundleError::NotABundle));
        assert_eq!(parse(b"PRCH\x07"), Err(BundleError::Format(7)));
        // Lengths that overflow when added are "cut short", not a panic.
        let err = parse(b"PRCH\x02\xff\xff\xff\xff\xff\xff\xff\xff").unwrap_err();
        assert!(matches!(err, BundleError::Truncated { .. }), "{err}");
    }

    #[test]
    fn a_key_file_that_is_not_an_ed25519_key_is_refused() {
        let err = SigningKey::from_pem(b"hello").err().unwrap();
        assert!(err.contains("no PEM block"), "{err}");
        let err =
            SigningKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .err()
                .unwrap();
        assert!(err.contains("not an ed25519 key"), "{err}");
    }
}
