//! Logging: tracing-subscriber to stdout, text or JSON, filtered by
//! `RUST_LOG` when set and by `--log-level` otherwise.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{Config, LogFormat};

/// Capped whatever the filter asks: aws-sigv4 logs the canonical request it
/// signs at TRACE, and for a presigned URL that holds the session token.
const NEVER_VERBOSE: &str = "aws_sigv4=info";

pub fn init(config: &Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    }
    // Added last, so it replaces any directive the user gave for the target.
    .add_directive(NEVER_VERBOSE.parse()?);
    let builder = fmt().with_env_filter(filter).with_target(false);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    }
}
