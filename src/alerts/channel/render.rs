//! What each channel sends for an alert: pure functions from an alert to a
//! request body (or a mail), truncated to each service's documented limits.
//!
//! Lengths are counted in UTF-16 code units, which is never fewer than the
//! characters a service counts (Unicode scalar values or UTF-16 units), and
//! strings are only ever cut on a character boundary.

use serde_json::{json, Value};

use super::config::{ChannelConfig, Target};
use super::sign;
use crate::alerts::event::{Alert, AlertKind, Route, Severity};
use crate::budget::period::format_rfc3339_ms;

/// The `user-agent` of every HTTP delivery.
pub const USER_AGENT: &str = concat!("bursar/", env!("CARGO_PKG_VERSION"));

/// Slack: a header block's plain text, at most 150 characters.
pub const SLACK_HEADER_MAX: usize = 150;
/// Slack: a section block's text, at most 3000 characters.
pub const SLACK_SECTION_TEXT_MAX: usize = 3000;
/// Slack: a section block's fields, at most 10 of them...
pub const SLACK_SECTION_FIELDS_MAX: usize = 10;
/// ...each at most 2000 characters.
pub const SLACK_FIELD_TEXT_MAX: usize = 2000;
/// Slack: a context block's text element, at most 2000 characters (our
/// bound, well under the message's 40000).
pub const SLACK_CONTEXT_TEXT_MAX: usize = 2000;
/// Slack: the top-level `text` (the notification fallback). Slack truncates
/// at 40000; we keep it to one section's worth.
pub const SLACK_FALLBACK_TEXT_MAX: usize = 3000;
/// Slack: at most 50 blocks in a message.
pub const SLACK_BLOCKS_MAX: usize = 50;

/// Teams: our bound on a TextBlock (a Teams message is capped at about
/// 28 KB in all; the card here stays far below it).
pub const TEAMS_TEXT_MAX: usize = 2000;
/// Teams: our bound on a fact's title.
pub const TEAMS_FACT_TITLE_MAX: usize = 256;
/// Teams: our bound on a fact's value.
pub const TEAMS_FACT_VALUE_MAX: usize = 1024;
/// Teams: the Adaptive Card schema version sent (1.4 is what Teams renders
/// for workflow webhooks; 1.5 only on some clients).
pub const TEAMS_CARD_VERSION: &str = "1.4";

/// PagerDuty: `payload.summary`, at most 1024 characters.
pub const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// PagerDuty: `dedup_key`, at most 255 characters.
pub const PAGERDUTY_DEDUP_KEY_MAX: usize = 255;
/// PagerDuty: our bound on `source`, `component`, `group` and `class`.
pub const PAGERDUTY_FIELD_MAX: usize = 255;

/// Discord: an embed's title, at most 256 characters.
pub const DISCORD_TITLE_MAX: usize = 256;
/// Discord: an embed's description, at most 4096 characters.
pub const DISCORD_DESCRIPTION_MAX: usize = 4096;
/// Discord: at most 25 fields in an embed.
pub const DISCORD_FIELDS_MAX: usize = 25;
/// Discord: a field's name, at most 256 characters.
pub const DISCORD_FIELD_NAME_MAX: usize = 256;
/// Discord: a field's value, at most 1024 characters.
pub const DISCORD_FIELD_VALUE_MAX: usize = 1024;
/// Discord: a footer's text, at most 2048 characters.
pub const DISCORD_FOOTER_MAX: usize = 2048;
/// Discord: all of an embed's text (title, description, field names and
/// values, footer) together, at most 6000 characters.
pub const DISCORD_EMBED_TOTAL_MAX: usize = 6000;

/// Email: our bound on the subject (RFC 5322 lines should stay under 998
/// octets; lettre folds and encodes).
pub const EMAIL_SUBJECT_MAX: usize = 200;

/// What one delivery sends.
#[derive(Clone, PartialEq, Eq)]
pub enum Rendered {
    /// A POST of `body` to `url` with `headers`.
    Http {
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A mail: subject, a plain text and an HTML part.
    Email {
        subject: String,
        text: String,
        html: String,
    },
}

impl std::fmt::Debug for Rendered {
    /// The URL may carry a credential: it is not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rendered::Http { headers, body, .. } => f
                .debug_struct("Http")
                .field("url", &"<redacted>")
                .field("headers", headers)
                .field("body", &String::from_utf8_lossy(body))
                .finish(),
            Rendered::Email {
                subject,
                text,
                html,
            } => f
                .debug_struct("Email")
                .field("subject", subject)
                .field("text", text)
                .field("html", html)
                .finish(),
        }
    }
}

/// Length as a service counts it, conservatively: UTF-16 code units.
pub fn text_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// `s` cut to at most `max` UTF-16 code units on a character boundary, with
/// an ellipsis when anything was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if text_len(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    // Leave room for the ellipsis (one unit).
    let budget = max - 1;
    let mut used = 0;
    let mut out = String::with_capacity(s.len().min(max * 4));
    for ch in s.chars() {
        let w = ch.len_utf16();
        if used + w > budget {
            break;
        }
        used += w;
        out.push(ch);
    }
    out.push('…');
    out
}

/// The current unix time, seconds.
pub fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What `channel` sends for `alert`, signed (webhooks) at the current time.
pub fn render(channel: &ChannelConfig, alert: &Alert, route: &Route) -> Rendered {
    render_at(channel, alert, route, now_unix_s())
}

/// [`render`] with the attempt's time given: `webhook-timestamp` is
/// `now_s`, and the signature covers it.
pub fn render_at(channel: &ChannelConfig, alert: &Alert, route: &Route, now_s: i64) -> Rendered {
    let json_headers = || {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("user-agent".to_string(), USER_AGENT.to_string()),
        ]
    };
    let to_vec = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    match &channel.target {
        Target::Webhook { dest, signing_key } => {
            let body = alert.webhook_bytes();
            let mut headers = json_headers();
            headers.push(("webhook-id".into(), alert.id.clone()));
            headers.push(("webhook-timestamp".into(), now_s.to_string()));
            if let Some(key) = signing_key {
                headers.push((
                    "webhook-signature".into(),
                    sign::sign(key.expose(), &alert.id, now_s, &body),
                ));
            }
            Rendered::Http {
                url: dest.url.expose().to_string(),
                headers,
                body,
            }
        }
        Target::Slack { dest } => Rendered::Http {
            url: dest.url.expose().to_string(),
            headers: json_headers(),
            body: to_vec(&slack_body(alert)),
        },
        Target::Teams { dest } => Rendered::Http {
            url: dest.url.expose().to_string(),
            headers: json_headers(),
            body: to_vec(&teams_body(alert)),
        },
        Target::Discord { dest } => Rendered::Http {
            url: dest.url.expose().to_string(),
            headers: json_headers(),
            body: to_vec(&discord_body(alert)),
        },
        Target::PagerDuty { dest, routing_key } => Rendered::Http {
            url: dest.url.expose().to_string(),
            headers: json_headers(),
            body: to_vec(&pagerduty_body(alert, route, routing_key.expose())),
        },
        Target::Email(_) => email_parts(alert),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped (they start links and
/// mentions: an entity named `<!channel>` must not ping anyone).
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Block Kit message for a Slack incoming webhook.
pub fn slack_body(alert: &Alert) -> Value {
    let title = alert.title();
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&title, SLACK_HEADER_MAX), "emoji": false},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&slack_escape(&alert.summary), SLACK_SECTION_TEXT_MAX)},
        }),
    ];
    let facts = alert.facts();
    for chunk in facts.chunks(SLACK_SECTION_FIELDS_MAX) {
        // Leave room for the context block.
        if blocks.len() + 1 >= SLACK_BLOCKS_MAX {
            break;
        }
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(label, value)| {
                json!({
                    "type": "mrkdwn",
                    "text": truncate(&format!("*{label}*\n{}", slack_escape(value)), SLACK_FIELD_TEXT_MAX),
                })
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": truncate(
                &format!("{} · {} · {}", alert.kind.as_str(), alert.severity.as_str(), alert.id),
                SLACK_CONTEXT_TEXT_MAX,
            ),
        }],
    }));
    json!({
        "text": truncate(&slack_escape(&format!("{title}: {}", alert.summary)), SLACK_FALLBACK_TEXT_MAX),
        "blocks": blocks,
    })
}

/// The Adaptive Card colour of a TextBlock for an alert.
fn teams_color(alert: &Alert) -> &'static str {
    if alert.kind == AlertKind::Recovered {
        return "Good";
    }
    match alert.severity {
        Severity::Info => "Accent",
        Severity::Warning => "Warning",
        Severity::Error | Severity::Critical => "Attention",
    }
}

/// A message with one Adaptive Card, for a Teams workflow ("When a Teams
/// webhook request is received") webhook.
pub fn teams_body(alert: &Alert) -> Value {
    let facts: Vec<Value> = alert
        .facts()
        .iter()
        .map(|(label, value)| {
            json!({
                "title": truncate(label, TEAMS_FACT_TITLE_MAX),
                "value": truncate(value, TEAMS_FACT_VALUE_MAX),
            })
        })
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": TEAMS_CARD_VERSION,
                "body": [
                    {
                        "type": "TextBlock",
                        "text": truncate(&alert.title(), TEAMS_TEXT_MAX),
                        "weight": "Bolder",
                        "size": "Medium",
                        "color": teams_color(alert),
                        "wrap": true,
                    },
                    {
                        "type": "TextBlock",
                        "text": truncate(&alert.summary, TEAMS_TEXT_MAX),
                        "wrap": true,
                    },
                    {"type": "FactSet", "facts": facts},
                    {
                        "type": "TextBlock",
                        "text": truncate(&format!("{} · {}", alert.kind.as_str(), format_rfc3339_ms(alert.timestamp_ms)), TEAMS_TEXT_MAX),
                        "isSubtle": true,
                        "size": "Small",
                        "wrap": true,
                    },
                ],
            },
        }],
    })
}

/// A PagerDuty Events API v2 event: `trigger` (with a payload), or
/// `resolve` for a recovery (PagerDuty needs only the routing and dedup
/// keys to resolve; the payload is sent anyway as context).
pub fn pagerduty_body(alert: &Alert, route: &Route, routing_key: &str) -> Value {
    let (component, group) = match &alert.data {
        crate::alerts::event::AlertData::Budget(b) => (
            format!("{} {}", b.entity.kind, b.entity.name),
            b.entity.kind.clone(),
        ),
        crate::alerts::event::AlertData::Report(r) => (
            format!("{} {}", r.scope.kind, r.scope.name),
            "report".to_string(),
        ),
        crate::alerts::event::AlertData::Operational(o) => {
            (o.subject.clone(), "operational".to_string())
        }
        crate::alerts::event::AlertData::Test { .. } => ("test".to_string(), "test".to_string()),
    };
    let summary = if alert.summary.is_empty() {
        alert.title()
    } else {
        alert.summary.clone()
    };
    let event_action = if alert.resolves() {
        "resolve"
    } else {
        "trigger"
    };
    json!({
        "routing_key": routing_key,
        "event_action": event_action,
        "dedup_key": truncate_plain(&route.dedup_key, PAGERDUTY_DEDUP_KEY_MAX),
        "client": "bursar",
        "payload": {
            "summary": truncate(&summary, PAGERDUTY_SUMMARY_MAX),
            "source": "bursar",
            "severity": alert.severity.as_str(),
            "timestamp": format_rfc3339_ms(alert.timestamp_ms),
            "component": truncate(&component, PAGERDUTY_FIELD_MAX),
            "group": truncate(&group, PAGERDUTY_FIELD_MAX),
            "class": alert.kind.as_str(),
            "custom_details": {
                "alert_id": alert.id,
                "type": alert.kind.as_str(),
                "rule": route.rule,
                "data": alert.data,
            },
        },
    })
}

/// A cut without an ellipsis, for identifiers (a key must not gain a char).
fn truncate_plain(s: &str, max: usize) -> String {
    let mut used = 0;
    s.chars()
        .take_while(|c| {
            used += c.len_utf16();
            used <= max
        })
        .collect()
}

/// The embed colour of an alert.
pub fn discord_color(alert: &Alert) -> u32 {
    if alert.kind == AlertKind::Recovered {
        return 0x2E_CC71;
    }
    match alert.severity {
        Severity::Info => 0x34_98DB,
        Severity::Warning => 0xF1_C40F,
        Severity::Error => 0xE6_7E22,
        Severity::Critical => 0xE7_4C3C,
    }
}

/// A Discord webhook message: one embed, mentions disabled (an entity name
/// like `@everyone` must not ping a server).
pub fn discord_body(alert: &Alert) -> Value {
    let title = truncate(&alert.title(), DISCORD_TITLE_MAX);
    let description = truncate(&alert.summary, DISCORD_DESCRIPTION_MAX);
    let footer = truncate(
        &format!("{} · {}", alert.kind.as_str(), alert.id),
        DISCORD_FOOTER_MAX,
    );
    let mut total = text_len(&title) + text_len(&description) + text_len(&footer);
    let mut fields = Vec::new();
    for (label, value) in alert.facts().iter().take(DISCORD_FIELDS_MAX) {
        let name = truncate(label, DISCORD_FIELD_NAME_MAX);
        // Discord refuses an empty field value.
        let value = if value.is_empty() {
            "—"
        } else {
            value.as_str()
        };
        let value = truncate(value, DISCORD_FIELD_VALUE_MAX);
        let len = text_len(&name) + text_len(&value);
        if total + len > DISCORD_EMBED_TOTAL_MAX {
            break;
        }
        total += len;
        fields.push(json!({"name": name, "value": value, "inline": true}));
    }
    let mut embed = json!({
        "title": title,
        "color": discord_color(alert),
        "fields": fields,
        "timestamp": format_rfc3339_ms(alert.timestamp_ms),
        "footer": {"text": footer},
    });
    // Discord refuses an empty description: leave it out instead.
    if !description.is_empty() {
        embed["description"] = Value::String(description);
    }
    json!({
        "allowed_mentions": {"parse": []},
        "embeds": [embed],
    })
}

/// `s` with the five HTML special characters escaped.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A mail's subject and parts.
pub fn email_parts(alert: &Alert) -> Rendered {
    // A subject is one line: no CR/LF from any field.
    let subject: String = alert
        .title()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let subject = truncate(&subject, EMAIL_SUBJECT_MAX);
    let facts = alert.facts();
    let mut text = format!("{}\n\n{}\n\n", alert.title(), alert.summary);
    for (label, value) in &facts {
        text.push_str(&format!("{label}: {value}\n"));
    }
    text.push_str(&format!(
        "\nType: {}\nTime: {}\n",
        alert.kind.as_str(),
        format_rfc3339_ms(alert.timestamp_ms)
    ));
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif\">\n",
    );
    html.push_str(&format!("<h2>{}</h2>\n", html_escape(&alert.title())));
    html.push_str(&format!(
        "<p>{}</p>\n<table>\n",
        html_escape(&alert.summary)
    ));
    for (label, value) in &facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
            html_escape(label),
            html_escape(value)
        ));
    }
    html.push_str(&format!(
        "</table>\n<p style=\"color:#666\">{} · {}</p>\n</body></html>\n",
        html_escape(alert.kind.as_str()),
        html_escape(&format_rfc3339_ms(alert.timestamp_ms))
    ));
    Rendered::Email {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::channel::config::ChannelSection;
    use crate::alerts::event::{AlertData, BudgetData, EntityRef};

    pub(crate) fn budget_alert(kind: AlertKind, entity_name: &str, summary: &str) -> Alert {
        Alert {
            id: "alrt_0123456789abcdef0123456789abcdef".into(),
            kind,
            timestamp_ms: 1_700_000_000_000,
            severity: if kind == AlertKind::Exhausted {
                Severity::Critical
            } else {
                Severity::Warning
            },
            summary: summary.into(),
            data: AlertData::Budget(BudgetData {
                entity: EntityRef {
                    kind: "key".into(),
                    name: entity_name.into(),
                },
                rules: vec!["ops".into()],
                threshold_percent: Some(80),
                recovered: None,
                reason: None,
                spent_usd: "80.00".into(),
                limit_usd: Some("100.00".into()),
                remaining_usd: Some("20.00".into()),
                soft_limit_usd: None,
                mode: "strict".into(),
                period_start: "2023-11-01T00:00:00Z".into(),
                reset_at: Some("2023-12-01T00:00:00Z".into()),
                projected_exhaustion_at: None,
                burn_rate_usd_per_hour: None,
                anomaly: None,
            }),
            routes: vec![],
            key: None,
        }
    }

    pub(crate) fn route() -> Route {
        Route {
            channel: "c".into(),
            rule: "ops".into(),
            dedup_key: "bursar:key:demo:2023-11:ops".into(),
        }
    }

    pub(crate) fn channel(src: &str) -> ChannelConfig {
        toml::from_str::<ChannelSection>(src)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn http_json(r: Rendered) -> (String, Vec<(String, String)>, Value) {
        let Rendered::Http { url, headers, body } = r else {
            panic!("not http: {r:?}")
        };
        (url, headers, serde_json::from_slice(&body).unwrap())
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn truncation_is_on_char_boundaries_and_within_limits() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("abcd", 0), "");
        // 'é' is one unit, '😀' two.
        let s = "é😀é😀é😀";
        for max in 0..12 {
            let t = truncate(s, max);
            assert!(text_len(&t) <= max, "{max}: {t}");
        }
        assert_eq!(truncate("😀😀", 2), "…");
        assert_eq!(truncate_plain("ab😀c", 3), "ab");
    }

    #[test]
    fn webhook_is_the_event_body_with_standard_webhooks_headers() {
        let c = channel("name = \"w\"\nkind = \"webhook\"\nurl = \"https://h.example/in\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "80% used");
        let Rendered::Http { url, headers, body } = render_at(&c, &a, &route(), 1_700_000_123)
        else {
            panic!()
        };
        assert_eq!(url, "https://h.example/in");
        assert_eq!(body, a.webhook_bytes());
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(header(&headers, "user-agent"), Some(USER_AGENT));
        assert!(USER_AGENT.starts_with("bursar/"));
        assert_eq!(header(&headers, "webhook-id"), Some(a.id.as_str()));
        assert_eq!(header(&headers, "webhook-timestamp"), Some("1700000123"));
        let key = sign::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            header(&headers, "webhook-signature").unwrap(),
            sign::sign(&key, &a.id, 1_700_000_123, &body)
        );
        // Unsigned without a secret.
        let u = channel("name = \"w\"\nkind = \"webhook\"\nurl = \"https://h.example/in\"");
        let (_, headers, _) = http_json(render_at(&u, &a, &route(), 1));
        assert_eq!(header(&headers, "webhook-signature"), None);
        assert_eq!(header(&headers, "webhook-id"), Some(a.id.as_str()));
    }

    #[test]
    fn slack_is_block_kit_within_limits_and_escaped() {
        let c = channel(
            "name = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/x\"",
        );
        let long = "x".repeat(5000);
        let a = budget_alert(
            AlertKind::ThresholdCrossed,
            &format!("<!channel>{long}"),
            &long,
        );
        let (url, headers, v) = http_json(render_at(&c, &a, &route(), 1));
        assert_eq!(url, "https://hooks.slack.com/services/T/B/x");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert!(text_len(v["text"].as_str().unwrap()) <= SLACK_FALLBACK_TEXT_MAX);
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= SLACK_BLOCKS_MAX);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(text_len(blocks[0]["text"]["text"].as_str().unwrap()) <= SLACK_HEADER_MAX);
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert!(text_len(blocks[1]["text"]["text"].as_str().unwrap()) <= SLACK_SECTION_TEXT_MAX);
        let mut saw_fields = 0;
        for b in blocks {
            if let Some(fields) = b["fields"].as_array() {
                assert!(fields.len() <= SLACK_SECTION_FIELDS_MAX);
                for f in fields {
                    assert_eq!(f["type"], "mrkdwn");
                    let t = f["text"].as_str().unwrap();
                    assert!(text_len(t) <= SLACK_FIELD_TEXT_MAX);
                    saw_fields += 1;
                }
            }
        }
        assert_eq!(saw_fields, a.facts().len());
        assert_eq!(blocks.last().unwrap()["type"], "context");
        // No raw mention anywhere in mrkdwn (the header is plain_text,
        // which Slack never parses for mentions).
        let mut mrkdwn = v.clone();
        mrkdwn["blocks"][0] = Value::Null;
        let s = mrkdwn.to_string();
        assert!(!s.contains("<!channel>"), "{s}");
        assert!(s.contains("&lt;!channel&gt;"));
    }

    #[test]
    fn teams_is_an_adaptive_card_message() {
        let c = channel("name = \"t\"\nkind = \"teams\"\nurl = \"https://prod.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=s\"");
        let a = budget_alert(AlertKind::Exhausted, "demo", "budget exhausted");
        let (_, _, v) = http_json(render_at(&c, &a, &route(), 1));
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(
            card["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        let body = card["body"].as_array().unwrap();
        assert_eq!(body[0]["type"], "TextBlock");
        assert_eq!(body[0]["text"], "Budget exhausted: key demo");
        assert_eq!(body[0]["color"], "Attention");
        let facts = body.iter().find(|b| b["type"] == "FactSet").unwrap()["facts"]
            .as_array()
            .unwrap();
        assert_eq!(facts.len(), a.facts().len());
        assert_eq!(facts[0]["title"], "Entity");
        assert_eq!(facts[0]["value"], "key demo");
    }

    #[test]
    fn pagerduty_triggers_and_resolves_with_the_route_dedup_key() {
        let c = channel("name = \"p\"\nkind = \"pagerduty\"\nrouting_key = \"R0123456789abcdef0123456789abcde\"");
        let long = "é".repeat(3000);
        let a = budget_alert(AlertKind::ThresholdCrossed, "demo", &long);
        let (url, _, v) = http_json(render_at(&c, &a, &route(), 1));
        assert_eq!(url, "https://events.pagerduty.com/v2/enqueue");
        assert_eq!(v["routing_key"], "R0123456789abcdef0123456789abcde");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "bursar:key:demo:2023-11:ops");
        let p = &v["payload"];
        let summary = p["summary"].as_str().unwrap();
        assert!(summary.chars().count() <= PAGERDUTY_SUMMARY_MAX && summary.starts_with("éé"));
        assert_eq!(p["source"], "bursar");
        assert_eq!(p["severity"], "warning");
        assert_eq!(p["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(p["component"], "key demo");
        assert_eq!(p["group"], "key");
        assert_eq!(p["class"], "budget.threshold_crossed");
        assert_eq!(p["custom_details"]["alert_id"], a.id);
        assert_eq!(p["custom_details"]["data"]["spent_usd"], "80.00");
        for sev in ["info", "warning", "error", "critical"] {
            let mut b = a.clone();
            b.severity = serde_json::from_value(json!(sev)).unwrap();
            assert_eq!(
                pagerduty_body(&b, &route(), "k")["payload"]["severity"],
                sev
            );
        }
        let r = budget_alert(AlertKind::Recovered, "demo", "recovered");
        let (_, _, v) = http_json(render_at(&c, &r, &route(), 1));
        assert_eq!(v["event_action"], "resolve");
        assert_eq!(v["dedup_key"], "bursar:key:demo:2023-11:ops");
        let mut long_key = route();
        long_key.dedup_key = "k".repeat(300);
        assert_eq!(
            pagerduty_body(&a, &long_key, "k")["dedup_key"]
                .as_str()
                .unwrap()
                .len(),
            PAGERDUTY_DEDUP_KEY_MAX
        );
    }

    #[test]
    fn discord_is_one_embed_within_limits() {
        let c = channel(
            "name = \"d\"\nkind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/tok\"",
        );
        let a = budget_alert(
            AlertKind::ThresholdCrossed,
            &"n".repeat(3000),
            &"s".repeat(9000),
        );
        let (_, _, v) = http_json(render_at(&c, &a, &route(), 1));
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        let embeds = v["embeds"].as_array().unwrap();
        assert_eq!(embeds.len(), 1);
        let e = &embeds[0];
        let title = e["title"].as_str().unwrap();
        let desc = e["description"].as_str().unwrap();
        assert!(text_len(title) <= DISCORD_TITLE_MAX);
        assert!(text_len(desc) <= DISCORD_DESCRIPTION_MAX);
        assert_eq!(e["color"], 0xF1C40F);
        assert_eq!(e["timestamp"], "2023-11-14T22:13:20Z");
        let fields = e["fields"].as_array().unwrap();
        assert!(fields.len() <= DISCORD_FIELDS_MAX);
        let mut total =
            text_len(title) + text_len(desc) + text_len(e["footer"]["text"].as_str().unwrap());
        for f in fields {
            let n = f["name"].as_str().unwrap();
            let val = f["value"].as_str().unwrap();
            assert!(text_len(n) <= DISCORD_FIELD_NAME_MAX && !n.is_empty());
            assert!(text_len(val) <= DISCORD_FIELD_VALUE_MAX && !val.is_empty());
            total += text_len(n) + text_len(val);
        }
        assert!(total <= DISCORD_EMBED_TOTAL_MAX, "{total}");
        // A short alert keeps every fact.
        let short = budget_alert(AlertKind::Recovered, "demo", "ok");
        let (_, _, v) = http_json(render_at(&c, &short, &route(), 1));
        assert_eq!(
            v["embeds"][0]["fields"].as_array().unwrap().len(),
            short.facts().len()
        );
        assert_eq!(v["embeds"][0]["color"], 0x2ECC71);
        let empty = budget_alert(AlertKind::Recovered, "demo", "");
        let (_, _, v) = http_json(render_at(&c, &empty, &route(), 1));
        assert!(v["embeds"][0].get("description").is_none());
    }

    #[test]
    fn email_escapes_html_and_keeps_the_subject_one_line() {
        let c = channel("name = \"m\"\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nfrom = \"b@example.com\"\nto = [\"ops@example.com\"]");
        let a = budget_alert(
            AlertKind::ThresholdCrossed,
            "<script>alert(1)</script>\r\nBcc: x@evil.example",
            "a & b",
        );
        let Rendered::Email {
            subject,
            text,
            html,
        } = render_at(&c, &a, &route(), 1)
        else {
            panic!()
        };
        assert!(!subject.contains('\n') && !subject.contains('\r'));
        assert!(subject.starts_with("Budget 80% used: key <script>"));
        assert!(text.contains("Spent (USD): 80.00"));
        assert!(text.contains(&a.id));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("a &amp; b"));
        assert!(html.contains(&a.id));
    }
}
