//! Log output: `SWITCHBOARD_LOG_FORMAT=json|pretty` (default pretty), filtered by `RUST_LOG`
//! (default `info`), written to stderr.

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("SWITCHBOARD_LOG_FORMAT must be `json` or `pretty`, got {0:?}")]
    UnknownFormat(String),
    #[error("RUST_LOG is not a valid filter: {0}")]
    BadFilter(String),
}

pub fn init(format: Option<&str>, filter: Option<&str>) -> Result<(), LoggingError> {
    let filter = match filter {
        Some(directives) => {
            EnvFilter::try_new(directives).map_err(|e| LoggingError::BadFilter(e.to_string()))?
        }
        None => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling serve twice in one process) keeps the first subscriber.
    let _ = match format.unwrap_or("pretty") {
        "json" => builder.json().flatten_event(true).try_init(),
        "pretty" => builder.with_ansi(false).try_init(),
        other => return Err(LoggingError::UnknownFormat(other.to_owned())),
    };
    Ok(())
}
