//! Loading routes.toml: read → parse with spans → merge environment overrides (figment) →
//! validate and resolve every setting → diagnostics with positions, or a resolved config.

pub mod diagnostic;
mod members;
pub mod resolved;
mod rules;
mod settings;
mod source;
mod suggest;
mod tree;
mod validate;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use diagnostic::{render_human, Code, Diagnostic, Origin, Report, Severity, SourceFile};
pub use resolved::ResolvedConfig;
pub use settings::{BuiltIn, Spec, PROVIDER_SPECS, ROUTE_SPECS};
pub use source::{Environment, ENV_PREFIX};

/// The outcome of reading a config: its diagnostics, and the resolved config when there was
/// no error.
#[derive(Debug)]
pub struct Loaded {
    pub source: SourceFile,
    /// Sorted by position: file positions first, then environment variables.
    pub diagnostics: Vec<Diagnostic>,
    pub config: Option<ResolvedConfig>,
    /// Short content hash of the file, naming this version of the config.
    pub version: String,
}

impl Loaded {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// The largest config file read: 16 MiB. Nothing legitimate comes near it (10,000 providers
/// take about 1 MiB), and it bounds what a mistaken path (`/dev/zero`, a log file) can cost.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The config could not be read at all (as opposed to read and found invalid).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config file {path} not found")]
    NotFound { path: String },
    /// A FIFO, a device, a directory, a socket: reading it could block forever or never end.
    #[error("cannot read config file {path}: it is {what}, not a regular file")]
    NotRegular { path: String, what: &'static str },
    #[error(
        "cannot read config file {path}: it is {size} bytes, over the limit of {} MiB ({} bytes)",
        MAX_CONFIG_BYTES / (1024 * 1024),
        MAX_CONFIG_BYTES
    )]
    TooLarge { path: String, size: u64 },
    #[error("cannot read config file {path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
}

/// Reads and validates the file at `path`.
pub fn load_file(path: &Path, env: &Environment) -> Result<Loaded, LoadError> {
    let bytes = read_file(path)?;
    Ok(load_bytes(&path.display().to_string(), &bytes, env))
}

/// Reads the config file's bytes: only a regular file (a symlink to one is followed), of at
/// most [`MAX_CONFIG_BYTES`]. Never blocks on what is not a regular file: the type is checked
/// before opening, the open itself does not wait (`O_NONBLOCK`: opening a FIFO otherwise waits
/// for a writer), and the opened file is checked again, so a file swapped in between is caught.
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let shown = || path.display().to_string();
    let failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: shown() },
        _ => LoadError::Unreadable { path: shown(), source },
    };
    let check = |metadata: &std::fs::Metadata| -> Result<(), LoadError> {
        if !metadata.is_file() {
            return Err(LoadError::NotRegular { path: shown(), what: describe(&metadata.file_type()) });
        }
        if metadata.len() > MAX_CONFIG_BYTES {
            return Err(LoadError::TooLarge { path: shown(), size: metadata.len() });
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(failed)?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(failed)?;
    let metadata = file.metadata().map_err(failed)?;
    check(&metadata)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or_default());
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(failed)?;
    // The file grew after it was checked.
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(LoadError::TooLarge { path: shown(), size: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// What a path that is not a regular file is, for the error.
fn describe(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Validates config text; `name` is how diagnostics name the file.
pub fn load_bytes(name: &str, bytes: &[u8], env: &Environment) -> Loaded {
    let version = content_version(bytes);
    let (source, mut diagnostics) = match std::str::from_utf8(bytes) {
        Ok(text) => (SourceFile::new(name, text), Vec::new()),
        Err(error) => {
            let at = error.valid_up_to();
            let source = SourceFile::new(name, String::from_utf8_lossy(bytes));
            let diagnostic =
                Diagnostic::error(Code::Encoding, Origin::File(at..at + 1), "the file is not valid UTF-8")
                    .with_help(Some("save routes.toml as UTF-8".into()));
            return Loaded { source, diagnostics: vec![diagnostic], config: None, version };
        }
    };
    let (root, read_diagnostics) = source::read(&source, env);
    // A value whose `${VAR}` could not be expanded is reported once, not again by every check
    // that then trips over the unexpanded text.
    let unexpanded: Vec<Origin> = read_diagnostics
        .iter()
        .filter(|d| matches!(d.code, Code::MissingEnv | Code::BadInterpolation))
        .map(|d| d.origin.clone())
        .collect();
    diagnostics.extend(read_diagnostics);
    let mut config = None;
    if let Some(root) = root {
        let mut found = Vec::new();
        let resolved = validate::validate(&root, &mut found);
        diagnostics.extend(found.into_iter().filter(|d| !unexpanded.contains(&d.origin)));
        if diagnostics.iter().all(|d| d.severity != Severity::Error) {
            config = resolved;
        }
    }
    diagnostics.sort_by(|a, b| {
        (&a.origin_key(), a.severity, &a.message).cmp(&(&b.origin_key(), b.severity, &b.message))
    });
    diagnostics.dedup();
    Loaded { source, diagnostics, config, version }
}

/// The first 12 hex digits of the SHA-256 of the file's bytes.
pub fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Diagnostic {
    fn origin_key(&self) -> (u8, usize, String) {
        match &self.origin {
            Origin::File(span) => (0, span.start, String::new()),
            Origin::Env(var) => (1, 0, var.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
