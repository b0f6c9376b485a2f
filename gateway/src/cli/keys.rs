//! Signing on the command line: `perch key generate`, `perch fn sign`, and
//! how `perch fn deploy` turns its arguments into a bundle (a module and a
//! manifest, signed with `--key` or not, or a bundle signed already). The
//! bundle format and the checks are in [`crate::functions::bundle`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::functions::bundle::{self, SigningKey};
use crate::functions::control;

use super::KeyCommand;

/// Where `perch key generate` writes the private key without `--out`.
pub const DEFAULT_KEY_FILE: &str = "perch-signing.key";

/// `perch key generate|public`.
pub(super) fn command(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { out, json } => {
            let public = generate(&out)?;
            if json {
                let doc = serde_json::json!({
                    "private_key_file": out.display().to_string(),
                    "public_key": public.to_string(),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                eprintln!(
                    "wrote the private key to {} (mode 0600: keep it secret, keep a copy). \
                     Trust it on a gateway with this line in [functions]:\n  \
                     trusted_keys = [\"{public}\"]\nthe public key:",
                    out.display()
                );
                println!("{public}");
            }
        }
        KeyCommand::Public { key } => println!("{}", public(&key)?),
    }
    Ok(())
}

/// `perch key generate`: writes a new private key (mode 0600, never over an
/// existing file) and returns its public key, `ed25519:<base64>`.
pub fn generate(out: &Path) -> anyhow::Result<bundle::PublicKey> {
    let (key, pem) = SigningKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; perch never overwrites a key (deploys signed with it would \
                 stop being trusted). Choose another file with --out, or delete it first",
                out.display()
            )
        } else {
            anyhow::anyhow!("cannot create the key file {}: {e}", out.display())
        }
    })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the key file {}", out.display()))?;
    Ok(key.public())
}

/// `perch key public`: the public key of a private key file.
pub fn public(key: &Path) -> anyhow::Result<bundle::PublicKey> {
    Ok(SigningKey::load(key)?.public())
}

/// Reads a module and its manifest and builds the bundle: signed (format
/// 2) with `key`, else unsigned (format 1).
pub fn build(wasm: &Path, manifest: &Path, key: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let module = std::fs::read(wasm)
        .with_context(|| format!("cannot read the module {}", wasm.display()))?;
    anyhow::ensure!(
        !module.starts_with(control::BUNDLE_MAGIC),
        "{} is a bundle already, not a module: deploy it without --manifest (and without --key)",
        wasm.display()
    );
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
    Ok(match key {
        Some(key) => SigningKey::load(key)?.sign(&text, &module)?,
        None => control::encode_bundle(&text, &module),
    })
}

/// What `perch fn deploy FILE` sends: FILE built with its manifest, or
/// FILE as it is when it is a bundle already (then checked here, so a
/// damaged file is refused before it travels).
pub fn deploy_bundle(
    file: &Path,
    manifest: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    if let Some(manifest) = manifest {
        return build(file, manifest, key);
    }
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read the bundle {}", file.display()))?;
    anyhow::ensure!(
        bytes.starts_with(control::BUNDLE_MAGIC),
        "{} is not a bundle; to deploy a module give its manifest too: \
         perch fn deploy {} --manifest FILE.toml",
        file.display(),
        file.display()
    );
    anyhow::ensure!(
        key.is_none(),
        "{} is a bundle already; --key signs a module and its manifest: \
         perch fn deploy FILE.wasm --manifest FILE.toml --key KEY",
        file.display()
    );
    bundle::parse(&bytes).with_context(|| format!("{} cannot be deployed", file.display()))?;
    Ok(bytes)
}

/// `perch fn sign`: writes the signed bundle to `out` (default: the
/// module's path with the extension `.bundle`); returns where it went.
pub fn sign(
    wasm: &Path,
    manifest: &Path,
    key: &Path,
    out: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, usize)> {
    let bundle = build(wasm, manifest, Some(key))?;
    let out = out.unwrap_or_else(|| wasm.with_extension("bundle"));
    std::fs::write(&out, &bundle)
        .with_context(|| format!("cannot write the bundle {}", out.display()))?;
    Ok((out, bundle.len()))
}
