//! The user's config file, `$XDG_CONFIG_HOME/swarmcache/config.toml` (else
//! `~/.config/swarmcache/config.toml`): defaults for the tracker URL, token, store and
//! rates, below flags and `SWARMCACHE_*` variables.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use toml::Spanned;

/// What `--help` says about variables and the file.
pub const HELP: &str = "\
Every flag can also be set by the SWARMCACHE_* variable shown beside it, and tracker,
token, ca_cert, store, cache_size, max_download_rate and max_upload_rate by the config file
$XDG_CONFIG_HOME/swarmcache/config.toml (else ~/.config/swarmcache/config.toml), e.g.
  tracker = \"http://tracker.lan:7070\"
  max_download_rate = \"50MiB\"
Precedence: flag, then variable, then file, then the built-in default.";

/// A config file bigger than this is not a config file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    tracker: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    ca_cert: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    cache_size: Option<Spanned<Size>>,
    max_download_rate: Option<Spanned<Size>>,
    max_upload_rate: Option<Spanned<Size>>,
}

/// A size given as a number of bytes or as text (`"25MiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn text(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(t) => t.clone(),
        }
    }
}

/// The values of a loaded config file, checked, by the clap argument id they default.
#[derive(Debug, Default)]
pub struct Config {
    values: Vec<(&'static str, String)>,
}

impl Config {
    /// The path of the config file: `$XDG_CONFIG_HOME/swarmcache/config.toml`, else
    /// `$HOME/.config/swarmcache/config.toml`; none without either variable.
    pub fn path() -> Option<PathBuf> {
        Some(
            super::xdg_home("XDG_CONFIG_HOME", ".config")?
                .join("swarmcache")
                .join("config.toml"),
        )
    }

    /// Loads the config file when there is one; a missing file is an empty config.
    pub fn load() -> Result<Config> {
        match Config::path() {
            Some(path) if path.exists() => Config::read(&path),
            _ => Ok(Config::default()),
        }
    }

    /// Reads and checks the config file at `path`; errors name the path and the line.
    pub fn read(path: &Path) -> Result<Config> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading the config file {}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            bail!(
                "the config file {} is over {MAX_CONFIG_BYTES} bytes",
                path.display()
            );
        }
        Config::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config> {
        // toml's message already says "at line N, column M".
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut values = Vec::new();
        let mut check = |id: &'static str,
                         value: Option<(String, std::ops::Range<usize>)>,
                         valid: fn(&str) -> Result<(), String>|
         -> Result<()> {
            if let Some((value, span)) = value {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                valid(&value).map_err(|e| anyhow::anyhow!("line {line}: {id}: {e}"))?;
                values.push((id, value));
            }
            Ok(())
        };
        let string = |v: Option<Spanned<String>>| {
            v.map(|s| {
                let span = s.span();
                (s.into_inner(), span)
            })
        };
        let size = |v: Option<Spanned<Size>>| {
            v.map(|s| {
                let span = s.span();
                (s.into_inner().text(), span)
            })
        };
        check("tracker", string(file.tracker), |v| {
            super::tracker_arg(v).map(drop)
        })?;
        check("token", string(file.token), |_| Ok(()))?;
        check("ca_cert", string(file.ca_cert), |v| match v.is_empty() {
            true => Err("is empty".into()),
            false => Ok(()),
        })?;
        check("store", string(file.store), |v| match v.is_empty() {
            true => Err("is empty".into()),
            false => Ok(()),
        })?;
        check("cache_size", size(file.cache_size), |v| {
            super::cache_size_arg(v).map(drop)
        })?;
        check("max_download_rate", size(file.max_download_rate), |v| {
            super::size_arg(v).map(drop)
        })?;
        check("max_upload_rate", size(file.max_upload_rate), |v| {
            super::size_arg(v).map(drop)
        })?;
        Ok(Config { values })
    }

    /// The checked values, by the clap argument id each is the default of.
    pub fn values(&self) -> &[(&'static str, String)] {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_and_errors_name_the_line() {
        let config = Config::parse(
            "tracker = \"http://t:7070\"\nmax_upload_rate = \"25MiB\"\ncache_size = 1000\n",
        )
        .unwrap();
        assert_eq!(
            config.values(),
            [
                ("tracker", "http://t:7070".to_string()),
                ("cache_size", "1000".to_string()),
                ("max_upload_rate", "25MiB".to_string()),
            ]
        );
        let bad = Config::parse("token = \"x\"\n\nmax_upload_rate = \"fast\"\n").unwrap_err();
        assert!(
            format!("{bad:#}").starts_with("line 3: max_upload_rate"),
            "{bad:#}"
        );
        let unknown = Config::parse("token = \"x\"\ntraker = \"http://t:1\"\n").unwrap_err();
        assert!(format!("{unknown:#}").contains("line 2"), "{unknown:#}");
        let tls =
            Config::parse("tracker = \"https://t:7443\"\nca_cert = \"/etc/ca.pem\"\n").unwrap();
        assert_eq!(
            tls.values(),
            [
                ("tracker", "https://t:7443".to_string()),
                ("ca_cert", "/etc/ca.pem".to_string()),
            ]
        );
        let url = Config::parse("tracker = \"127.0.0.1:7070\"\n").unwrap_err();
        assert!(
            format!("{url:#}").contains("http://127.0.0.1:7070"),
            "{url:#}"
        );
    }
}
