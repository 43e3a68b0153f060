//! Files that hold subscribers' data (outbox messages, previews): created readable by the
//! owner only (files 0600, folders 0700), whatever the umask.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents as owner-only folders; an existing folder keeps the
/// mode its owner gave it.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Writes `bytes` to `path` (replacing it) as an owner-only file.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // A file that existed keeps its mode through open(); make it private too.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))?;
    f.write_all(bytes)
}

/// [`create_dir`] from async code.
pub async fn create_dir_async(dir: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .await
}

/// [`write`] from async code.
pub async fn write_async(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}
