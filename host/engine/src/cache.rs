//! Compiled components on disk, by the component's sha256 and the engine's settings
//! (wasmtime's `precompile_compatibility_hash`): a worker that switches to a plugin it
//! compiled before (or that another process on the machine compiled) loads native code
//! instead of compiling again, which for a 10-20 MB interpreter-based plugin takes
//! seconds. A file that does not load (another wasmtime, a torn write) is compiled again
//! and replaced.
//!
//! What the directory holds is native code the host runs: it must be as protected as the
//! binary itself. So the directory is created 0700, and one that is a symbolic link, is
//! owned by another user or is writable by group or others is refused (at start, and
//! again before every load); files are written 0600 under a new name that no link can
//! redirect, then renamed; each compiled file has its sha256 beside it
//! (`<file>.sha256`), checked before its bytes are deserialized.

use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;

/// Creates `dir` (0700, with its missing parents) if it does not exist, and checks that
/// only this user can change it: not a symbolic link, owned by the effective user, not
/// writable by group or others. The error says what to fix.
pub(crate) fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    check_dir(dir)
}

/// See [`prepare_dir`].
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        anyhow::bail!(
            "{} is a symbolic link: give the directory itself",
            dir.display()
        );
    }
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        anyhow::bail!(
            "{} is owned by uid {}, not by this process's user (uid {euid}): it holds native \
             code this process runs; give a directory of this user's",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by group or others (mode {:o}): it holds native code this process \
             runs; run `chmod 700 {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Where the compiled form of component `digest` goes for `engine`.
fn path_of(engine: &wasmtime::Engine, dir: &Path, digest: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

/// Component `bytes` (of sha256 `digest`), from `dir` when it was compiled there before
/// for this engine's settings, else compiled and stored there. Answers whether it came
/// from the cache.
pub(crate) fn load_or_compile(
    engine: &wasmtime::Engine,
    dir: &Path,
    digest: &str,
    bytes: &[u8],
) -> wasmtime::Result<(Component, bool)> {
    let path = path_of(engine, dir, digest);
    match read_checked(dir, &path) {
        Ok(Some(compiled)) => {
            // SAFETY: the bytes are those `store` below wrote (their sha256 matches the
            // one written beside them): this engine's compilation of the component
            // whose sha256 names the file, in a directory only this user can change
            // (checked just now). wasmtime checks that a compatible engine made them.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "a cached component does not load; compiling it again");
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "not loading a cached component; compiling it again");
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = check_dir(dir).and_then(|()| store(&component, &path)) {
        tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache a compiled component");
    }
    Ok((component, false))
}

/// The file of the sha256 of compiled file `path`.
fn digest_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The bytes of compiled file `path`, if there is one: read without following a link,
/// from a directory [`check_dir`] accepts, and only if their sha256 is the one beside
/// them.
fn read_checked(dir: &Path, path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let mut file = match open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    check_dir(dir)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut expected = String::new();
    open(&digest_path(path))
        .and_then(|mut f| f.read_to_string(&mut expected))
        .with_context(|| format!("{} has no readable sha256 beside it", path.display()))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if expected.trim() != actual {
        anyhow::bail!(
            "{} does not match the sha256 beside it (torn or changed)",
            path.display()
        );
    }
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` atomically: a new file (0600; never an existing file or a
/// link) renamed over it.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // A name no other writer (process or thread) uses at the same time.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".partial-{}-{n}", std::process::id()));
    let partial = PathBuf::from(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(&partial);
    }
    Ok(written?)
}

/// Writes the compiled component to `path` and its sha256 beside it, each atomically.
fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    write_new(
        &digest_path(path),
        hex::encode(Sha256::digest(&bytes)).as_bytes(),
    )?;
    write_new(path, &bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn the_directory_is_private_or_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("cache");
        prepare_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("writable by group or others") && err.contains("chmod 700"),
            "{err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = prepare_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_changed_file_or_a_link_is_never_loaded() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        prepare_dir(&dir).unwrap();
        let path = dir.join("x.cwasm");
        write_new(
            &digest_path(&path),
            hex::encode(Sha256::digest(b"code")).as_bytes(),
        )
        .unwrap();
        write_new(&path, b"code").unwrap();
        assert_eq!(read_checked(&dir, &path).unwrap().unwrap(), b"code");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Changed in place: refused.
        std::fs::write(&path, b"evil").unwrap();
        let err = read_checked(&dir, &path).unwrap_err().to_string();
        assert!(err.contains("does not match the sha256"), "{err}");
        // A link in its place: not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, b"code").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(read_checked(&dir, &path).is_err());
        // No digest beside it: refused.
        std::fs::remove_file(&path).unwrap();
        write_new(&path, b"code").unwrap();
        std::fs::remove_file(digest_path(&path)).unwrap();
        let err = read_checked(&dir, &path).unwrap_err().to_string();
        assert!(err.contains("no readable sha256"), "{err}");
        // Writing over a link replaces the link, never its target.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        write_new(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"code");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
