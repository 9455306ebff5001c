//! The data folder and what `serve` keeps in it, readable by its owner only: the folder 0700,
//! the store, the event log and the admin token 0600. Files an older version created with looser
//! modes (and the store file, which redb creates with the umask's) are tightened at start.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// The shortest bearer token accepted, from the environment or a file.
pub(super) const MIN_TOKEN_LEN: usize = 16;

/// Mode of the data folder.
const DIR_MODE: u32 = 0o700;

/// Mode of the files in it.
const FILE_MODE: u32 = 0o600;

/// Creates the data folder (0700), or tightens an existing one to 0700.
pub(super) fn data_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    restrict(path, DIR_MODE)
}

/// Sets `path`'s permission bits to `mode` unless they are already (a file another user owns
/// fails here, which is right: `serve` would not be its only reader).
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    let now = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions().mode();
    if now & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {} to {mode:o}", path.display()))?;
    }
    Ok(())
}

/// Makes a file `serve` keeps in the data folder (the store once redb created it) owner-only.
pub(super) fn private_file(path: &Path) -> anyhow::Result<()> {
    restrict(path, FILE_MODE)
}

/// Opens `path` for appending, created 0600 (and tightened to 0600 if it existed).
pub(super) fn append_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    private_file(path)?;
    Ok(file)
}

/// The admin token: from `IPSHADOW_ADMIN_TOKEN`, else from `admin-token` in the data folder,
/// else a new one written there (0600). The same length rule holds for both sources: a short or
/// empty token is refused, never served.
pub(super) fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("IPSHADOW_ADMIN_TOKEN") {
        if token.len() < MIN_TOKEN_LEN {
            bail!("IPSHADOW_ADMIN_TOKEN is shorter than {MIN_TOKEN_LEN} characters");
        }
        return Ok(token);
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.len() < MIN_TOKEN_LEN {
                bail!(
                    "{}: the admin token in it is shorter than {MIN_TOKEN_LEN} characters{}: write a longer \
                     one, delete the file for a new one to be generated, or set IPSHADOW_ADMIN_TOKEN",
                    path.display(),
                    if token.is_empty() { " (the file is empty)" } else { "" }
                );
            }
            private_file(&path)?;
            return Ok(token.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}")?;
    eprintln!("ipshadow serve: generated an admin token in {} (mode 0600)", path.display());
    Ok(token)
}
