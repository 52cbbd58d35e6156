//! Alert channels: a signed generic webhook (Standard Webhooks), Slack,
//! Microsoft Teams, PagerDuty, Discord and email.
//!
//! - [`config`]: the `[[alerts.channels]]` table / admin API body
//!   ([`ChannelSection`]), validated into a [`ChannelConfig`]; the masked
//!   view of a channel.
//! - [`render`]: what each kind sends for an alert (pure).
//! - [`sign`]: Standard Webhooks signatures.
//! - [`ssrf`]: the destination guard (resolve once, refuse non-public
//!   addresses unless `allow_private`, connect to what was checked).
//! - [`send`]: one blocking attempt over HTTP (ureq) or SMTP (lettre).
//!
//! [`deliver`] ties them together; it blocks for up to the timeouts in
//! [`send`] and runs only on the alerts delivery thread.

use std::time::Duration;

use super::event::{Alert, Route};

pub mod config;
pub mod render;
pub mod send;
pub mod sign;
pub mod ssrf;

pub use config::{
    ChannelConfig, ChannelError, ChannelKind, ChannelSecret, ChannelSecretBytes, ChannelSection,
    Destination, EmailTarget, SmtpTls, Target,
};
pub use render::{render, render_at, Rendered};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth another try (a timeout, a 5xx, a 429), after at least `after`
    /// when the receiver said so (Retry-After, capped at one hour).
    Retry {
        after: Option<Duration>,
    },
    /// Trying again cannot help (a 4xx other than 408/425/429, a refused
    /// destination, an SMTP 5xx).
    Permanent,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status, or the SMTP reply code, when there was one.
    pub status: Option<u16>,
    /// From the start of the attempt (resolution included) to its end.
    pub latency_ms: u64,
    /// Why it did not succeed: the receiver's first 200 characters, or the
    /// transport's error. Never a secret.
    pub error: Option<String>,
    pub outcome: Outcome,
}

/// Sends `alert` to `channel` once, blocking (bounded by the channel's
/// timeouts: [`send::REQUEST_TIMEOUT`], [`send::SMTP_TIMEOUT`]).
pub fn deliver(channel: &ChannelConfig, alert: &Alert, route: &Route) -> Attempt {
    match (render(channel, alert, route), &channel.target) {
        (Rendered::Http { url, headers, body }, _) => {
            send::send_http(channel, &url, &headers, &body)
        }
        (
            Rendered::Email {
                subject,
                text,
                html,
            },
            Target::Email(target),
        ) => send::send_email(channel, target, alert, &subject, text, html),
        // render() gives a mail only for an email target.
        (Rendered::Email { .. }, _) => Attempt {
            status: None,
            latency_ms: 0,
            error: Some("a mail rendered for a non-email channel".into()),
            outcome: Outcome::Permanent,
        },
    }
}

#[cfg(test)]
mod tests;
