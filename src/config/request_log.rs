//! The `[log]` section: as written in the file, and validated into the
//! request log's [`LogConfig`]. Config owns the file's shape; the request
//! log knows only its validated settings.

use std::time::Duration;

use crate::reqlog::{
    LogConfig, SinkKind, LOG_BATCH_MAX, LOG_FLUSH_INTERVAL_MAX, LOG_RETENTION_MIN,
};

/// The `[log]` section as written in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// "sqlite" (default) or "postgres".
    pub sink: Option<String>,
    /// `postgres://user@host:port/db`, required for (and only for) postgres.
    pub url: Option<String>,
    /// e.g. "30d", "12h"; absent keeps rows forever.
    pub retention: Option<String>,
    pub max_rows: Option<u64>,
    pub store_text: Option<bool>,
    pub batch_max: Option<usize>,
    /// e.g. "200ms", "1s".
    pub flush_interval: Option<String>,
}

/// Validates a `[log]` section; the error names the field (`log.url: ...`).
pub fn log_config(section: &LogSection) -> Result<LogConfig, String> {
    let defaults = LogConfig::default();
    let sink = match (section.sink.as_deref(), &section.url) {
        (None | Some("sqlite"), None) => SinkKind::Sqlite,
        (None | Some("sqlite"), Some(_)) => {
            return Err("log.url: only used with sink = \"postgres\"".into())
        }
        (Some("postgres"), Some(url)) => {
            url.parse::<::postgres::Config>()
                .map_err(|e| format!("log.url: not a PostgreSQL URL: {e}"))?;
            SinkKind::Postgres { url: url.clone() }
        }
        (Some("postgres"), None) => return Err("log.url: required with sink = \"postgres\"".into()),
        (Some(other), _) => {
            return Err(format!(
                "log.sink: {other:?} is not a sink (use \"sqlite\" or \"postgres\")"
            ))
        }
    };
    let retention = match &section.retention {
        None => None,
        Some(text) => {
            let d = parse_log_duration(text).ok_or_else(|| {
                format!("log.retention: {text:?} is not a duration (use e.g. \"30d\", \"12h\")")
            })?;
            if d < LOG_RETENTION_MIN {
                return Err(format!(
                    "log.retention: must be at least {}s",
                    LOG_RETENTION_MIN.as_secs()
                ));
            }
            Some(d)
        }
    };
    if section.max_rows == Some(0) {
        return Err("log.max_rows: must be above zero".into());
    }
    let batch_max = section.batch_max.unwrap_or(defaults.batch_max);
    if !(1..=LOG_BATCH_MAX).contains(&batch_max) {
        return Err(format!("log.batch_max: must be 1 to {LOG_BATCH_MAX}"));
    }
    let flush_interval = match &section.flush_interval {
        None => defaults.flush_interval,
        Some(text) => {
            let d = parse_log_duration(text).ok_or_else(|| {
                format!("log.flush_interval: {text:?} is not a duration (use e.g. \"200ms\")")
            })?;
            if d.is_zero() || d > LOG_FLUSH_INTERVAL_MAX {
                return Err(format!(
                    "log.flush_interval: must be above zero and at most {}s",
                    LOG_FLUSH_INTERVAL_MAX.as_secs()
                ));
            }
            d
        }
    };
    Ok(LogConfig {
        sink,
        retention,
        max_rows: section.max_rows,
        store_text: section.store_text.unwrap_or(defaults.store_text),
        batch_max,
        flush_interval,
    })
}

/// The config's durations ("500ms", "30s", "5m", "2h") plus days ("30d").
fn parse_log_duration(s: &str) -> Option<Duration> {
    match s.trim().strip_suffix('d') {
        Some(days) if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) => {
            let days: u64 = days.parse().ok()?;
            Some(Duration::from_secs(days.checked_mul(86_400)?))
        }
        _ => super::parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> LogSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_are_sqlite_without_text() {
        let cfg = log_config(&LogSection::default()).unwrap();
        assert_eq!(cfg, LogConfig::default());
        assert_eq!(cfg.sink, SinkKind::Sqlite);
        assert!(!cfg.store_text);
    }

    #[test]
    fn a_full_section_parses() {
        let cfg = log_config(&section(
            r#"
            sink = "postgres"
            url = "postgres://postgres@127.0.0.1:5432/bursar"
            retention = "30d"
            max_rows = 1000000
            store_text = true
            batch_max = 512
            flush_interval = "50ms"
            "#,
        ))
        .unwrap();
        assert_eq!(
            cfg,
            LogConfig {
                sink: SinkKind::Postgres {
                    url: "postgres://postgres@127.0.0.1:5432/bursar".into()
                },
                retention: Some(Duration::from_secs(30 * 86_400)),
                max_rows: Some(1_000_000),
                store_text: true,
                batch_max: 512,
                flush_interval: Duration::from_millis(50),
            }
        );
        assert_eq!(
            format!("{:?}", cfg.sink),
            "Postgres { url: <redacted> }",
            "a URL may carry a password"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("sink = \"mysql\"", "log.sink:"),
            ("sink = \"postgres\"", "log.url: required"),
            ("url = \"postgres://x\"", "log.url: only used"),
            (
                "sink = \"postgres\"\nurl = \"http://x y\"",
                "log.url: not a PostgreSQL URL",
            ),
            ("retention = \"30 days\"", "log.retention:"),
            ("retention = \"10s\"", "log.retention: must be at least"),
            ("max_rows = 0", "log.max_rows:"),
            ("batch_max = 0", "log.batch_max:"),
            ("batch_max = 100000", "log.batch_max:"),
            ("flush_interval = \"0ms\"", "log.flush_interval:"),
            ("flush_interval = \"1h\"", "log.flush_interval:"),
            ("flush_interval = \"soon\"", "log.flush_interval:"),
        ];
        for (text, expected) in cases {
            let e = log_config(&section(text)).unwrap_err();
            assert!(e.starts_with(expected), "{text}: {e}");
        }
        assert!(toml::from_str::<LogSection>("path = \"x\"").is_err());
    }

    #[test]
    fn durations_include_days() {
        assert_eq!(
            parse_log_duration("30d"),
            Some(Duration::from_secs(2_592_000))
        );
        assert_eq!(parse_log_duration("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(
            parse_log_duration("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_log_duration("d"), None);
        assert_eq!(parse_log_duration("-1d"), None);
        assert_eq!(parse_log_duration("99999999999999999999d"), None);
    }
}
