//! A channel's configuration: the `[[alerts.channels]]` table (and the admin
//! API's JSON body, the same shape), its validation into a [`ChannelConfig`],
//! and the masked view the admin API shows.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sign;

/// The PagerDuty Events API v2 endpoint used when a pagerduty channel sets no `url`.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Longest channel name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Longest destination URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Deliveries a minute when `rate_limit_per_minute` is not set.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 30;

/// Most deliveries a minute a channel may be configured for.
pub const MAX_RATE_LIMIT_PER_MINUTE: u32 = 10_000;

/// Longest `cooldown_s` accepted: one day.
pub const MAX_COOLDOWN_S: u64 = 86_400;

/// Longest SMTP host name (DNS names are at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;

/// Most recipients of one email channel.
pub const MAX_EMAIL_RECIPIENTS: usize = 50;

/// Longest PagerDuty routing key accepted (integration keys are 32 chars).
pub const MAX_ROUTING_KEY_LEN: usize = 128;

/// What is shown in place of a secret.
pub const MASK: &str = "********";

/// A secret value of a channel: a URL with a token in its path, a signing
/// secret, a routing key, a password. Its `Debug` never shows it.
///
/// This mirrors `crate::config::Secret`, which has no public constructor the
/// channel module could call; switch to it once it has one.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSecret(String);

impl ChannelSecret {
    pub fn new(value: String) -> ChannelSecret {
        ChannelSecret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSecret(<redacted>)")
    }
}

/// The kinds of channel, by their config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    #[default]
    Webhook,
    Slack,
    Teams,
    PagerDuty,
    Discord,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Teams => "teams",
            ChannelKind::PagerDuty => "pagerduty",
            ChannelKind::Discord => "discord",
            ChannelKind::Email => "email",
        }
    }
}

/// How an email channel talks to its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (port 25): only for a relay on a trusted network.
    None,
}

impl SmtpTls {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }

    /// The port used when `smtp_port` is not set.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// One `[[alerts.channels]]` table, or the admin API's JSON body for a
/// channel, exactly as written. Validate it with [`ChannelSection::validate`].
///
/// A `*_env` field names an environment variable holding the value instead
/// (read at validation); setting both forms of one field is an error.
///
/// Serialising a section writes its secrets as given (it is the config
/// file's shape); what the admin API shows is [`ChannelConfig::masked`].
/// Its `Debug` masks them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    /// 1 to 64 of `[A-Za-z0-9_.-]`; what rules route to.
    pub name: String,
    pub kind: ChannelKind,
    /// webhook, slack, teams, discord: where to POST (required); pagerduty:
    /// an override of the Events API endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// webhook only: the Standard Webhooks signing secret `whsec_<base64>`.
    /// Without it the webhook is sent unsigned (allowed: a receiver on a
    /// trusted network may not need it; it then cannot tell our deliveries
    /// from anyone else's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// pagerduty only (required): the integration's routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_env: Option<String>,
    /// Permit destinations that resolve to loopback, private, link-local...
    /// addresses (the SSRF guard). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
    /// Most deliveries a minute; default 30, at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Least seconds between two deliveries to this channel; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_s: Option<u64>,
    /// email only (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    /// email only; default by `smtp_tls`: 587, 465 or 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// email only; default "starttls".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_tls: Option<SmtpTls>,
    /// email only: the SMTP login; with `password`/`password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// email only (required): the sender mailbox, `a@b.c` or `Name <a@b.c>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// email only (required, 1 to 50 mailboxes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
}

impl fmt::Debug for ChannelSection {
    /// Secrets are shown as set or not, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mask = |v: &Option<String>| v.as_ref().map(|_| MASK);
        f.debug_struct("ChannelSection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &mask(&self.url))
            .field("url_env", &self.url_env)
            .field("secret", &mask(&self.secret))
            .field("secret_env", &self.secret_env)
            .field("routing_key", &mask(&self.routing_key))
            .field("routing_key_env", &self.routing_key_env)
            .field("allow_private", &self.allow_private)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("cooldown_s", &self.cooldown_s)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_tls", &self.smtp_tls)
            .field("username", &self.username)
            .field("password", &mask(&self.password))
            .field("password_env", &self.password_env)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

/// A configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ChannelError {}

fn err(field: &str, message: impl Into<String>) -> ChannelError {
    ChannelError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A validated destination URL (the whole URL is secret: Slack, Teams and
/// Discord put the credential in its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: ChannelSecret,
    /// `scheme://host[:port]/…`, safe to show.
    pub masked: String,
}

/// The validated email settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailTarget {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    /// Login and password, when the server wants them.
    pub credentials: Option<(String, ChannelSecret)>,
    pub from: lettre::message::Mailbox,
    pub to: Vec<lettre::message::Mailbox>,
}

/// Where and how a channel delivers, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The generic webhook; `signing_key` is the decoded `whsec_` secret
    /// (`None`: sent unsigned).
    Webhook {
        dest: Destination,
        signing_key: Option<ChannelSecretBytes>,
    },
    Slack {
        dest: Destination,
    },
    Teams {
        dest: Destination,
    },
    PagerDuty {
        dest: Destination,
        routing_key: ChannelSecret,
    },
    Discord {
        dest: Destination,
    },
    Email(EmailTarget),
}

/// A decoded signing key; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSecretBytes(Vec<u8>);

impl ChannelSecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ChannelSecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelSecretBytes(<redacted>)")
    }
}

/// A validated channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// Most deliveries a minute to this channel.
    pub rate_limit_per_minute: u32,
    /// Least time between two deliveries to this channel (zero: none).
    pub cooldown: Duration,
    /// Whether non-public destination addresses are permitted.
    pub allow_private: bool,
    pub target: Target,
}

impl ChannelConfig {
    /// The channel as the admin API shows it: every secret masked (URLs as
    /// scheme, host and port only; secrets, routing keys and passwords as
    /// [`MASK`]).
    pub fn masked(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name,
            "kind": self.kind.as_str(),
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "cooldown_s": self.cooldown.as_secs(),
            "allow_private": self.allow_private,
        });
        let obj = v.as_object_mut();
        let Some(obj) = obj else { return v };
        match &self.target {
            Target::Webhook { dest, signing_key } => {
                obj.insert("url".into(), dest.masked.clone().into());
                obj.insert("signed".into(), signing_key.is_some().into());
                obj.insert(
                    "secret".into(),
                    match signing_key {
                        Some(_) => MASK.into(),
                        None => serde_json::Value::Null,
                    },
                );
            }
            Target::Slack { dest } | Target::Teams { dest } | Target::Discord { dest } => {
                obj.insert("url".into(), dest.masked.clone().into());
            }
            Target::PagerDuty { dest, .. } => {
                obj.insert("url".into(), dest.masked.clone().into());
                obj.insert("routing_key".into(), MASK.into());
            }
            Target::Email(e) => {
                obj.insert("smtp_host".into(), e.smtp_host.clone().into());
                obj.insert("smtp_port".into(), e.smtp_port.into());
                obj.insert("smtp_tls".into(), e.smtp_tls.as_str().into());
                match &e.credentials {
                    Some((user, _)) => {
                        obj.insert("username".into(), user.clone().into());
                        obj.insert("password".into(), MASK.into());
                    }
                    None => {
                        obj.insert("username".into(), serde_json::Value::Null);
                        obj.insert("password".into(), serde_json::Value::Null);
                    }
                }
                obj.insert("from".into(), e.from.to_string().into());
                let to: Vec<String> = e.to.iter().map(|m| m.to_string()).collect();
                obj.insert("to".into(), to.into());
            }
        }
        v
    }
}

/// Whether `name` is a valid channel name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A value given directly or through an environment variable.
fn direct_or_env(
    field: &str,
    direct: &Option<String>,
    env: &Option<String>,
) -> Result<Option<String>, ChannelError> {
    let env_field = format!("{field}_env");
    match (direct, env) {
        (Some(_), Some(_)) => Err(err(field, format!("set {field} or {env_field}, not both"))),
        (Some(v), None) if v.is_empty() => Err(err(field, "is empty")),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Ok(_) => Err(err(
                &env_field,
                format!("environment variable {var} is empty"),
            )),
            Err(_) => Err(err(
                &env_field,
                format!("environment variable {var} is not set"),
            )),
        },
        (None, None) => Ok(None),
    }
}

/// The field a value came from, for errors about the value itself.
fn source_field(field: &str, direct: &Option<String>) -> String {
    if direct.is_some() {
        field.to_string()
    } else {
        format!("{field}_env")
    }
}

/// Checks an http(s) URL and builds its masked form.
fn destination(field: &str, raw: String) -> Result<Destination, ChannelError> {
    if raw.len() > MAX_URL_LEN {
        return Err(err(field, format!("longer than {MAX_URL_LEN} bytes")));
    }
    let url = url::Url::parse(&raw).map_err(|e| err(field, format!("not a valid URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(err(field, "must be an http:// or https:// URL"));
    }
    let Some(host) = url.host_str() else {
        return Err(err(field, "has no host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(field, "must not carry credentials before the host"));
    }
    let masked = match url.port() {
        Some(p) => format!("{}://{host}:{p}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    };
    Ok(Destination {
        url: ChannelSecret::new(raw),
        masked,
    })
}

fn mailbox(field: &str, raw: &str) -> Result<lettre::message::Mailbox, ChannelError> {
    raw.parse::<lettre::message::Mailbox>()
        .map_err(|e| err(field, format!("{raw:?} is not a valid mailbox: {e}")))
}

impl ChannelSection {
    /// The names of the fields set, with the kinds that accept each.
    fn foreign_fields(&self) -> Option<&'static str> {
        use ChannelKind::*;
        let k = self.kind;
        let set: [(&'static str, bool, &[ChannelKind]); 14] = [
            (
                "url",
                self.url.is_some(),
                &[Webhook, Slack, Teams, Discord, PagerDuty],
            ),
            (
                "url_env",
                self.url_env.is_some(),
                &[Webhook, Slack, Teams, Discord, PagerDuty],
            ),
            ("secret", self.secret.is_some(), &[Webhook]),
            ("secret_env", self.secret_env.is_some(), &[Webhook]),
            ("routing_key", self.routing_key.is_some(), &[PagerDuty]),
            (
                "routing_key_env",
                self.routing_key_env.is_some(),
                &[PagerDuty],
            ),
            ("smtp_host", self.smtp_host.is_some(), &[Email]),
            ("smtp_port", self.smtp_port.is_some(), &[Email]),
            ("smtp_tls", self.smtp_tls.is_some(), &[Email]),
            ("username", self.username.is_some(), &[Email]),
            ("password", self.password.is_some(), &[Email]),
            ("password_env", self.password_env.is_some(), &[Email]),
            ("from", self.from.is_some(), &[Email]),
            ("to", self.to.is_some(), &[Email]),
        ];
        set.iter()
            .find(|(_, present, kinds)| *present && !kinds.contains(&k))
            .map(|(name, _, _)| *name)
    }

    /// Checks the section and reads its `*_env` variables.
    pub fn validate(&self) -> Result<ChannelConfig, ChannelError> {
        if !valid_name(&self.name) {
            return Err(err(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        if let Some(field) = self.foreign_fields() {
            return Err(err(
                field,
                format!("is not used by a {} channel", self.kind.as_str()),
            ));
        }
        let rate_limit_per_minute = self
            .rate_limit_per_minute
            .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE);
        if !(1..=MAX_RATE_LIMIT_PER_MINUTE).contains(&rate_limit_per_minute) {
            return Err(err(
                "rate_limit_per_minute",
                format!("must be 1 to {MAX_RATE_LIMIT_PER_MINUTE}"),
            ));
        }
        let cooldown_s = self.cooldown_s.unwrap_or(0);
        if cooldown_s > MAX_COOLDOWN_S {
            return Err(err(
                "cooldown_s",
                format!("must be at most {MAX_COOLDOWN_S} (one day)"),
            ));
        }
        let target = match self.kind {
            ChannelKind::Webhook => {
                let dest = self.required_url()?;
                let signing_key = match direct_or_env("secret", &self.secret, &self.secret_env)? {
                    None => None,
                    Some(s) => Some(ChannelSecretBytes(
                        sign::decode_secret(&s)
                            .map_err(|m| err(&source_field("secret", &self.secret), m))?,
                    )),
                };
                Target::Webhook { dest, signing_key }
            }
            ChannelKind::Slack => Target::Slack {
                dest: self.required_url()?,
            },
            ChannelKind::Teams => Target::Teams {
                dest: self.required_url()?,
            },
            ChannelKind::Discord => Target::Discord {
                dest: self.required_url()?,
            },
            ChannelKind::PagerDuty => {
                let dest = match direct_or_env("url", &self.url, &self.url_env)? {
                    Some(u) => destination(&source_field("url", &self.url), u)?,
                    None => destination("url", PAGERDUTY_EVENTS_URL.to_string())?,
                };
                let Some(key) =
                    direct_or_env("routing_key", &self.routing_key, &self.routing_key_env)?
                else {
                    return Err(err(
                        "routing_key",
                        "is required for a pagerduty channel (or routing_key_env)",
                    ));
                };
                if key.len() > MAX_ROUTING_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err(
                        &source_field("routing_key", &self.routing_key),
                        format!("must be at most {MAX_ROUTING_KEY_LEN} printable ASCII characters"),
                    ));
                }
                Target::PagerDuty {
                    dest,
                    routing_key: ChannelSecret::new(key),
                }
            }
            ChannelKind::Email => Target::Email(self.email()?),
        };
        Ok(ChannelConfig {
            name: self.name.clone(),
            kind: self.kind,
            rate_limit_per_minute,
            cooldown: Duration::from_secs(cooldown_s),
            allow_private: self.allow_private,
            target,
        })
    }

    fn required_url(&self) -> Result<Destination, ChannelError> {
        match direct_or_env("url", &self.url, &self.url_env)? {
            Some(u) => destination(&source_field("url", &self.url), u),
            None => Err(err(
                "url",
                format!(
                    "is required for a {} channel (or url_env)",
                    self.kind.as_str()
                ),
            )),
        }
    }

    fn email(&self) -> Result<EmailTarget, ChannelError> {
        let Some(host) = &self.smtp_host else {
            return Err(err("smtp_host", "is required for an email channel"));
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || (!is_ip && !matches!(url::Host::parse(host), Ok(url::Host::Domain(_))))
        {
            return Err(err(
                "smtp_host",
                format!("{host:?} is not a host name or address"),
            ));
        }
        let smtp_tls = self.smtp_tls.unwrap_or_default();
        let smtp_port = self.smtp_port.unwrap_or(smtp_tls.default_port());
        if smtp_port == 0 {
            return Err(err("smtp_port", "must be 1 to 65535"));
        }
        let password = direct_or_env("password", &self.password, &self.password_env)?;
        let credentials = match (&self.username, password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), ChannelSecret::new(p))),
            (Some(_), Some(_)) => return Err(err("username", "is empty")),
            (Some(_), None) => {
                return Err(err(
                    "password",
                    "is required with username (or password_env)",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    &source_field("password", &self.password),
                    "is set without username",
                ))
            }
            (None, None) => None,
        };
        if credentials.is_some() && smtp_tls == SmtpTls::None {
            return Err(err(
                "smtp_tls",
                "\"none\" would send the password in the clear; use \"starttls\" or \"tls\"",
            ));
        }
        let Some(from) = &self.from else {
            return Err(err("from", "is required for an email channel"));
        };
        let from = mailbox("from", from)?;
        let to_raw = self.to.as_deref().unwrap_or_default();
        if to_raw.is_empty() {
            return Err(err("to", "needs at least one address"));
        }
        if to_raw.len() > MAX_EMAIL_RECIPIENTS {
            return Err(err(
                "to",
                format!("at most {MAX_EMAIL_RECIPIENTS} addresses"),
            ));
        }
        let to = to_raw
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmailTarget {
            smtp_host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            smtp_port,
            smtp_tls,
            credentials,
            from,
            to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_src: &str) -> ChannelSection {
        toml::from_str(toml_src).unwrap()
    }

    fn field_of(toml_src: &str) -> String {
        section(toml_src).validate().unwrap_err().field
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_full_webhook_section_validates() {
        let c = section(&format!(
            r#"
            name = "ops-hook"
            kind = "webhook"
            url = "https://hooks.example.com/in/abc123token"
            secret = "{SECRET}"
            rate_limit_per_minute = 12
            cooldown_s = 60
            "#
        ))
        .validate()
        .unwrap();
        assert_eq!(c.name, "ops-hook");
        assert_eq!(c.kind, ChannelKind::Webhook);
        assert_eq!(c.rate_limit_per_minute, 12);
        assert_eq!(c.cooldown, Duration::from_secs(60));
        assert!(!c.allow_private);
        let Target::Webhook { dest, signing_key } = &c.target else {
            panic!("{:?}", c.target)
        };
        assert_eq!(
            dest.url.expose(),
            "https://hooks.example.com/in/abc123token"
        );
        assert_eq!(signing_key.as_ref().unwrap().expose().len(), 24);
        // Debug shows no secret.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("abc123token"), "{dbg}");
        assert!(!dbg.contains("MfKQ9r8"), "{dbg}");
    }

    #[test]
    fn defaults() {
        let c = section(
            "name = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/x\"",
        )
        .validate()
        .unwrap();
        assert_eq!(c.rate_limit_per_minute, DEFAULT_RATE_LIMIT_PER_MINUTE);
        assert_eq!(c.cooldown, Duration::ZERO);
        let pd = section("name = \"p\"\nkind = \"pagerduty\"\nrouting_key = \"R0123456789abcdef0123456789abcde\"")
            .validate()
            .unwrap();
        let Target::PagerDuty { dest, routing_key } = &pd.target else {
            panic!()
        };
        assert_eq!(dest.url.expose(), PAGERDUTY_EVENTS_URL);
        assert_eq!(routing_key.expose(), "R0123456789abcdef0123456789abcde");
        let e = section(
            "name = \"m\"\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nfrom = \"Bursar <bursar@example.com>\"\nto = [\"ops@example.com\"]",
        )
        .validate()
        .unwrap();
        let Target::Email(t) = &e.target else {
            panic!()
        };
        assert_eq!(t.smtp_tls, SmtpTls::StartTls);
        assert_eq!(t.smtp_port, 587);
        let tls = section(
            "name = \"m\"\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nsmtp_tls = \"tls\"\nfrom = \"b@example.com\"\nto = [\"ops@example.com\"]",
        )
        .validate()
        .unwrap();
        let Target::Email(t) = &tls.target else {
            panic!()
        };
        assert_eq!(t.smtp_port, 465);
        for (host, bare) in [("[::1]", "::1"), ("::1", "::1"), ("192.0.2.1", "192.0.2.1")] {
            let c = section(&format!(
                "name = \"m\"\nkind = \"email\"\nsmtp_host = \"{host}\"\nfrom = \"b@example.com\"\nto = [\"o@example.com\"]"
            ))
            .validate()
            .unwrap();
            let Target::Email(t) = &c.target else {
                panic!()
            };
            assert_eq!(t.smtp_host, bare);
        }
    }

    #[test]
    fn errors_name_their_field() {
        let cases: &[(&str, &str)] = &[
            ("name = \"\"\nkind = \"slack\"\nurl = \"https://a.example/x\"", "name"),
            ("name = \"a b\"\nkind = \"slack\"\nurl = \"https://a.example/x\"", "name"),
            (&*format!("name = \"{}\"\nkind = \"slack\"\nurl = \"https://a.example/x\"", "n".repeat(65)), "name"),
            ("name = \"s\"\nkind = \"slack\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"ftp://a.example/x\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"not a url\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://u:p@a.example/x\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\nrouting_key = \"k\"", "routing_key"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\nsecret = \"whsec_x\"", "secret"),
            ("name = \"s\"\nkind = \"teams\"\nurl = \"https://a.example/x\"\nto = [\"a@b.c\"]", "to"),
            ("name = \"s\"\nkind = \"email\"\nurl = \"https://a.example/x\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\nurl_env = \"X\"", "url"),
            ("name = \"s\"\nkind = \"slack\"\nurl_env = \"BURSAR_TEST_SURELY_UNSET_VAR\"", "url_env"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\nrate_limit_per_minute = 10001", "rate_limit_per_minute"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\nrate_limit_per_minute = 0", "rate_limit_per_minute"),
            ("name = \"s\"\nkind = \"slack\"\nurl = \"https://a.example/x\"\ncooldown_s = 86401", "cooldown_s"),
            ("name = \"w\"\nkind = \"webhook\"\nurl = \"https://a.example/x\"\nsecret = \"whsec_c2hvcnQ=\"", "secret"),
            ("name = \"w\"\nkind = \"webhook\"\nurl = \"https://a.example/x\"\nsecret = \"plain\"", "secret"),
            ("name = \"p\"\nkind = \"pagerduty\"", "routing_key"),
            ("name = \"p\"\nkind = \"pagerduty\"\nrouting_key = \"has space\"", "routing_key"),
            ("name = \"m\"\nkind = \"email\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]", "smtp_host"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"a b\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]", "smtp_host"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h/x\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]", "smtp_host"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nto = [\"a@b.c\"]", "from"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"not an address\"\nto = [\"a@b.c\"]", "from"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"\nto = []", "to"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"", "to"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\", \"nope\"]", "to"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\nusername = \"u\"", "password"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\npassword = \"p\"", "password"),
            ("name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nsmtp_tls = \"none\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\nusername = \"u\"\npassword = \"p\"", "smtp_tls"),
        ];
        for (src, field) in cases {
            let e = section(src).validate().unwrap_err();
            assert_eq!(&e.field, field, "{src}: {e}");
            assert_eq!(e.to_string(), format!("{}: {}", e.field, e.message));
        }
        let too_many: Vec<String> = (0..51).map(|i| format!("\"a{i}@b.c\"")).collect();
        assert_eq!(
            field_of(&format!(
                "name = \"m\"\nkind = \"email\"\nsmtp_host = \"h.example\"\nfrom = \"a@b.c\"\nto = [{}]",
                too_many.join(",")
            )),
            "to"
        );
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_parse() {
        assert!(toml::from_str::<ChannelSection>(
            "name = \"s\"\nkind = \"slack\"\nurl = \"https://a/x\"\nchannel = \"#ops\""
        )
        .is_err());
        assert!(toml::from_str::<ChannelSection>("name = \"s\"\nkind = \"sms\"").is_err());
        assert!(serde_json::from_str::<ChannelSection>(
            r#"{"name":"s","kind":"slack","url":"https://a/x","extra":1}"#
        )
        .is_err());
        let s: ChannelSection =
            serde_json::from_str(r#"{"name":"p","kind":"pagerduty","routing_key":"k"}"#).unwrap();
        assert_eq!(s.kind, ChannelKind::PagerDuty);
        // Round trip in both formats.
        let again: ChannelSection =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        let again: ChannelSection = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn env_variables_are_read() {
        // A name no other test uses; set once, read by this test only.
        let var = "BURSAR_CHANNEL_TEST_ROUTING_KEY_7f3a";
        std::env::set_var(var, "envkey0123456789");
        let c = section(&format!(
            "name = \"p\"\nkind = \"pagerduty\"\nrouting_key_env = \"{var}\""
        ))
        .validate()
        .unwrap();
        let Target::PagerDuty { routing_key, .. } = &c.target else {
            panic!()
        };
        assert_eq!(routing_key.expose(), "envkey0123456789");
    }

    #[test]
    fn masking_never_shows_a_secret() {
        let secrets = [
            "abc123token",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "R0123456789abcdef0123456789abcde",
            "hunter2-smtp-password",
            "T000/B000/XXXX",
        ];
        let channels = [
            format!("name = \"w\"\nkind = \"webhook\"\nurl = \"https://hooks.example.com:8443/in/abc123token?x=abc123token\"\nsecret = \"{SECRET}\""),
            "name = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T000/B000/XXXX\"".to_string(),
            "name = \"p\"\nkind = \"pagerduty\"\nrouting_key = \"R0123456789abcdef0123456789abcde\"".to_string(),
            "name = \"m\"\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nusername = \"bursar\"\npassword = \"hunter2-smtp-password\"\nfrom = \"b@example.com\"\nto = [\"ops@example.com\"]".to_string(),
        ];
        for src in &channels {
            let c = section(src).validate().unwrap();
            let shown = c.masked().to_string();
            for s in secrets {
                assert!(!shown.contains(s), "{shown} shows {s}");
            }
            let dbg = format!("{:?} {:?}", c, section(src));
            for s in secrets {
                assert!(!dbg.contains(s), "{dbg} shows {s}");
            }
        }
        let w = section(&channels[0]).validate().unwrap().masked();
        assert_eq!(w["url"], "https://hooks.example.com:8443/…");
        assert_eq!(w["secret"], MASK);
        assert_eq!(w["kind"], "webhook");
        let s = section(&channels[1]).validate().unwrap().masked();
        assert_eq!(s["url"], "https://hooks.slack.com/…");
        let m = section(&channels[3]).validate().unwrap().masked();
        assert_eq!(m["password"], MASK);
        assert_eq!(m["username"], "bursar");
        assert_eq!(m["to"][0], "ops@example.com");
    }
}
