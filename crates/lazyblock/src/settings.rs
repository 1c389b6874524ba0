//! Settings resolution: command line > environment > config file > built-in defaults.
//!
//! Only this module reads the environment and the config file; the library crates receive
//! typed settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// The TOML config file (`~/.config/lazyblock/config.toml`, or `--config` / `LAZYBLOCK_CONFIG`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Store URL.
    pub(crate) store: Option<String>,
    /// Default tenant.
    pub(crate) tenant: Option<String>,
    /// Directory of the local keyring.
    pub(crate) keys_dir: Option<PathBuf>,
    /// Chunk size for builds, in bytes.
    pub(crate) chunk_size: Option<u64>,
    /// Chunk uploads in flight.
    pub(crate) upload_concurrency: Option<usize>,
    /// Chunk fetches in flight (export, verify).
    pub(crate) fetch_concurrency: Option<usize>,
    /// The AZ cache tier.
    pub(crate) l2: Option<FileL2>,
    /// The root group builds write into (docs/gc.md).
    pub(crate) root_group: Option<String>,
    /// Garbage collection.
    pub(crate) gc: Option<FileGc>,
}

/// The `[gc]` table of the config file: durations such as `"36h"` or `"2d"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileGc {
    /// `gc run` rotates a group whose active root is this old.
    pub(crate) rotate_after: Option<String>,
    /// Retired roots expire this long after their migration finished.
    pub(crate) expire_after: Option<String>,
    /// Expired roots are deleted this long after they expired.
    pub(crate) delete_after: Option<String>,
    /// How long a reader trusts a root's state before reading it again.
    pub(crate) root_check_interval: Option<String>,
}

/// The `[l2]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileL2 {
    /// memcached nodes, `host:port`.
    pub(crate) nodes: Option<Vec<String>>,
    /// Stripes needed to rebuild a chunk.
    pub(crate) k: Option<usize>,
    /// Stripes written per chunk.
    pub(crate) n: Option<usize>,
    /// Per-request timeout, e.g. `"50ms"`.
    pub(crate) timeout: Option<String>,
    /// Background fills in flight at most.
    pub(crate) fill_backlog: Option<usize>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$<var>` if absolute, else `~/<fallback>` (the XDG base directory rules).
pub(crate) fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// `$XDG_CONFIG_HOME/lazyblock` (default `~/.config/lazyblock`).
pub(crate) fn config_dir() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("lazyblock")
}

/// `$XDG_DATA_HOME/lazyblock` (default `~/.local/share/lazyblock`).
pub(crate) fn data_dir() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share").join("lazyblock")
}

/// Loads the config file: an explicit path must exist; the default path is optional.
pub(crate) fn load_file_config(explicit: Option<&Path>) -> Result<FileConfig> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (config_dir().join("config.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileConfig::default())
        }
        Err(e) => bail!("cannot read config file {}: {e}", path.display()),
    };
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parses a size such as `512KiB`, `4MiB`, `1GiB`, `1G`, `65536`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "invalid size {text:?}: expected a number with an optional unit such as KiB, MiB, GiB"
        )
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size unit in {text:?}: use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses `250ms`, `3s`, `2m`, `1h`, `2d` or a number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 3s, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}: use ms, s, m, h or d"
            ))
        }
    })
}

/// A duration setting: the flag if given, else the config file's text (an invalid one is an
/// error naming `key`), else `default`.
pub(crate) fn duration_setting(
    flag: Option<Duration>,
    file: Option<&str>,
    key: &str,
    default: Duration,
) -> Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(text)) => parse_duration(text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("config file: {key}")),
        (None, None) => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn config_file_is_strict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "store = \"file:///x\"\ntenant = \"t\"\n").expect("write");
        let c = load_file_config(Some(&p)).expect("load");
        assert_eq!(c.store.as_deref(), Some("file:///x"));
        std::fs::write(&p, "stor = \"x\"\n").expect("write");
        assert!(load_file_config(Some(&p)).is_err());
        assert!(load_file_config(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
