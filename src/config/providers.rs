//! `[[providers]]`: each kind's settings and credentials, validated into
//! [`ProviderConfig`]; base URLs parsed into [`UpstreamTarget`]s.

use super::file::ProviderSection;
use super::{err, ConfigError, ProviderConfig, ProviderKind, Secret, UpstreamTarget};
use crate::limits;

/// Kind-specific provider settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireConfig {
    /// `openai` and `mock`: nothing more.
    Plain,
    /// `anthropic`: the `anthropic-version` header sent.
    Anthropic { version: String },
    /// `azure`: the `api-version` query parameter, and the deployment
    /// serving each model (a model not mapped is its own deployment).
    Azure {
        api_version: String,
        deployments: std::collections::BTreeMap<String, String>,
    },
    /// `bedrock`: the region and credentials requests are signed with.
    Bedrock {
        region: String,
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

impl WireConfig {
    /// The Azure deployment that serves `model`.
    pub fn azure_deployment<'a>(&'a self, model: &'a str) -> &'a str {
        match self {
            WireConfig::Azure { deployments, .. } => deployments.get(model).map_or(model, |d| d),
            _ => model,
        }
    }
}

/// Gemini's API, when `base_url` is not given.
pub const GEMINI_BASE_URL_DEFAULT: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The `anthropic-version` sent when the config names none.
pub const ANTHROPIC_VERSION_DEFAULT: &str = "2023-06-01";
/// Anthropic's API, when `base_url` is not given.
pub const ANTHROPIC_BASE_URL_DEFAULT: &str = "https://api.anthropic.com";

/// A header value or path segment from the config: printable ASCII, no
/// spaces or characters a path or header would need escaped.
/// Whether `s` can go into a URL path as one segment as it is: letters,
/// digits, '-', '_', '.', '~' (no escaping needed), not "." or ".." (or
/// any dots-only name a server might resolve), at most 128 bytes.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.bytes().all(|b| b == b'.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

fn secret_from(
    field: &str,
    value: Option<&String>,
    env: Option<&String>,
) -> Result<Option<Secret>, ConfigError> {
    let s = match (value, env) {
        (Some(_), Some(_)) => return Err(err(field, "set api_key or api_key_env, not both")),
        (Some(k), None) => Secret(k.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Secret(v),
            _ => {
                return Err(err(
                    format!("{field}.api_key_env"),
                    format!("environment variable {var} is not set"),
                ))
            }
        },
        (None, None) => return Ok(None),
    };
    if s.0
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b < 0x20 || b == 0x7f)
    {
        return Err(err(field, "api key contains control characters"));
    }
    Ok(Some(s))
}

/// A provider's keys: `api_key` / `api_key_env` (one), or `api_keys` /
/// `api_keys_env` (several, rotated on 429 and auth errors).
fn api_keys(field: &str, p: &ProviderSection) -> Result<Vec<Secret>, ConfigError> {
    let one = secret_from(field, p.api_key.as_ref(), p.api_key_env.as_ref())?;
    let listed = p.api_keys.as_deref().unwrap_or_default();
    let listed_env = p.api_keys_env.as_deref().unwrap_or_default();
    let several = listed.len() + listed_env.len();
    if one.is_some() && several > 0 {
        return Err(err(field, "set api_key(_env) or api_keys(_env), not both"));
    }
    if several > limits::PROVIDER_API_KEYS_MAX {
        return Err(err(
            format!("{field}.api_keys"),
            format!("at most {} keys", limits::PROVIDER_API_KEYS_MAX),
        ));
    }
    let mut keys: Vec<Secret> = one.into_iter().collect();
    for k in listed {
        keys.extend(secret_from(&format!("{field}.api_keys"), Some(k), None)?);
    }
    for var in listed_env {
        keys.extend(secret_from(
            &format!("{field}.api_keys_env"),
            None,
            Some(var),
        )?);
    }
    Ok(keys)
}

pub(super) fn validate_provider(
    field: &str,
    p: &ProviderSection,
) -> Result<ProviderConfig, ConfigError> {
    if p.name.is_empty() || p.name.len() > 64 {
        return Err(err(field, "name must be 1 to 64 bytes"));
    }
    let kind = ProviderKind::parse(&p.kind).ok_or_else(|| {
        let names: Vec<String> = ProviderKind::ALL
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect();
        err(
            format!("{field}.kind"),
            format!("{:?}: use one of {}", p.kind, names.join(", ")),
        )
    })?;
    if p.models.len() > limits::MODELS_PER_PROVIDER_MAX {
        return Err(err(format!("{field}.models"), "too many models"));
    }
    for m in &p.models {
        if m.is_empty() || m.len() > limits::MODEL_NAME_BYTES_MAX {
            return Err(err(
                format!("{field}.models"),
                format!(
                    "model names must be 1 to {} bytes",
                    limits::MODEL_NAME_BYTES_MAX
                ),
            ));
        }
    }
    let only = |what: &str, set: bool, kinds: &str| -> Result<(), ConfigError> {
        if set {
            return Err(err(
                format!("{field}.{what}"),
                format!("only for kind {kinds}"),
            ));
        }
        Ok(())
    };
    only(
        "anthropic_version",
        p.anthropic_version.is_some() && kind != ProviderKind::Anthropic,
        "\"anthropic\"",
    )?;
    only(
        "api_version",
        p.api_version.is_some() && kind != ProviderKind::Azure,
        "\"azure\"",
    )?;
    only(
        "deployments",
        p.deployments.is_some() && kind != ProviderKind::Azure,
        "\"azure\"",
    )?;
    let not_bedrock = kind != ProviderKind::Bedrock;
    only("region", p.region.is_some() && not_bedrock, "\"bedrock\"")?;
    only(
        "aws_access_key_id_env",
        p.aws_access_key_id_env.is_some() && not_bedrock,
        "\"bedrock\"",
    )?;
    only(
        "aws_secret_access_key_env",
        p.aws_secret_access_key_env.is_some() && not_bedrock,
        "\"bedrock\"",
    )?;
    only(
        "aws_session_token_env",
        p.aws_session_token_env.is_some() && not_bedrock,
        "\"bedrock\"",
    )?;
    let region = match (kind, &p.region) {
        (ProviderKind::Bedrock, None) => {
            return Err(err(
                format!("{field}.region"),
                "required for kind \"bedrock\" (e.g. \"us-east-1\")",
            ))
        }
        (_, Some(r))
            if r.is_empty()
                || r.len() > 32
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            return Err(err(
                format!("{field}.region"),
                "an AWS region such as \"us-east-1\"",
            ))
        }
        (_, r) => r.clone(),
    };
    let bedrock_url = region
        .as_ref()
        .map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com"));
    let base_url = match (kind, &p.base_url) {
        (ProviderKind::Mock, Some(_)) => {
            return Err(err(
                format!("{field}.base_url"),
                "kind \"mock\" runs in process and takes no base_url",
            ))
        }
        (ProviderKind::Mock, None) => None,
        (ProviderKind::Anthropic, None) => Some(ANTHROPIC_BASE_URL_DEFAULT),
        (ProviderKind::Gemini, None) => Some(GEMINI_BASE_URL_DEFAULT),
        (ProviderKind::Bedrock, None) => bedrock_url.as_deref(),
        (ProviderKind::OpenAi | ProviderKind::Azure, None) => {
            return Err(err(
                format!("{field}.base_url"),
                format!("required for kind {:?}", kind.name()),
            ))
        }
        (_, Some(url)) => Some(url.as_str()),
    };
    let upstream = match base_url {
        None => None,
        Some(url) => Some(parse_base_url(&format!("{field}.base_url"), url)?),
    };
    let wire = match kind {
        ProviderKind::Anthropic => {
            let version = p
                .anthropic_version
                .as_deref()
                .unwrap_or(ANTHROPIC_VERSION_DEFAULT);
            if !is_token(version) {
                return Err(err(
                    format!("{field}.anthropic_version"),
                    "a version such as \"2023-06-01\"",
                ));
            }
            WireConfig::Anthropic {
                version: version.to_string(),
            }
        }
        ProviderKind::Azure => {
            let api_version = p.api_version.as_deref().ok_or_else(|| {
                err(
                    format!("{field}.api_version"),
                    "required for kind \"azure\" (e.g. \"2024-10-21\")",
                )
            })?;
            if !is_token(api_version) {
                return Err(err(
                    format!("{field}.api_version"),
                    "a version such as \"2024-10-21\"",
                ));
            }
            let deployments = p.deployments.clone().unwrap_or_default();
            if deployments.len() > limits::MODELS_PER_PROVIDER_MAX {
                return Err(err(format!("{field}.deployments"), "too many deployments"));
            }
            for (model, d) in &deployments {
                if !is_token(d) {
                    return Err(err(
                        format!("{field}.deployments.{model}"),
                        "a deployment name is letters, digits, '-', '_' and '.'",
                    ));
                }
            }
            for m in &p.models {
                if m != "*" && !deployments.contains_key(m) && !is_token(m) {
                    return Err(err(
                        format!("{field}.deployments"),
                        format!("model {m:?} cannot be a deployment name; map it in deployments"),
                    ));
                }
            }
            WireConfig::Azure {
                api_version: api_version.to_string(),
                deployments,
            }
        }
        ProviderKind::Bedrock => {
            let env = |what: &str,
                       var: &Option<String>,
                       default: &str|
             -> Result<Option<Secret>, ConfigError> {
                let var = var.as_deref().unwrap_or(default);
                match std::env::var(var) {
                    Ok(v) if !v.is_empty() => {
                        if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
                            return Err(err(
                                format!("{field}.{what}"),
                                "contains control characters",
                            ));
                        }
                        Ok(Some(Secret(v)))
                    }
                    _ => Ok(None),
                }
            };
            let missing = |what: &str, default: &str| {
                err(
                    format!("{field}.{what}"),
                    format!("the environment variable it names (default {default}) is not set"),
                )
            };
            WireConfig::Bedrock {
                region: region.clone().unwrap_or_default(),
                access_key_id: env(
                    "aws_access_key_id_env",
                    &p.aws_access_key_id_env,
                    "AWS_ACCESS_KEY_ID",
                )?
                .ok_or_else(|| missing("aws_access_key_id_env", "AWS_ACCESS_KEY_ID"))?,
                secret_access_key: env(
                    "aws_secret_access_key_env",
                    &p.aws_secret_access_key_env,
                    "AWS_SECRET_ACCESS_KEY",
                )?
                .ok_or_else(|| missing("aws_secret_access_key_env", "AWS_SECRET_ACCESS_KEY"))?,
                session_token: env(
                    "aws_session_token_env",
                    &p.aws_session_token_env,
                    "AWS_SESSION_TOKEN",
                )?,
            }
        }
        ProviderKind::OpenAi | ProviderKind::Mock | ProviderKind::Gemini => WireConfig::Plain,
    };
    let api_keys = api_keys(field, p)?;
    if kind == ProviderKind::Bedrock && !api_keys.is_empty() {
        return Err(err(
            format!("{field}.api_key"),
            "kind \"bedrock\" signs with AWS credentials (aws_access_key_id_env, aws_secret_access_key_env), not an api_key",
        ));
    }
    if kind == ProviderKind::Azure && api_keys.is_empty() {
        return Err(err(
            format!("{field}.api_key"),
            "kind \"azure\" needs an api_key (sent as api-key)",
        ));
    }
    let extra_roots = match &p.ca_file {
        None => Vec::new(),
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            if upstream.as_ref().is_none_or(|u| !u.tls) {
                return Err(err(
                    format!("{field}.ca_file"),
                    "only an https base_url uses a CA file",
                ));
            }
            let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| err(format!("{field}.ca_file"), format!("{path}: {e}")))?
                .collect();
            let certs =
                certs.map_err(|e| err(format!("{field}.ca_file"), format!("{path}: {e}")))?;
            if certs.is_empty() {
                return Err(err(
                    format!("{field}.ca_file"),
                    format!("{path} holds no PEM certificate"),
                ));
            }
            certs
        }
    };
    Ok(ProviderConfig {
        name: p.name.clone(),
        kind,
        upstream,
        api_keys,
        wire,
        models: p.models.clone(),
        budget: None,
        extra_roots,
    })
}

/// Parses an upstream base URL such as "https://api.openai.com/v1".
pub fn parse_base_url(field: &str, text: &str) -> Result<UpstreamTarget, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| err(field, format!("{text:?}: {e}")))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(err(field, format!("scheme {other:?}: use http or https"))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            field,
            "credentials in the URL are not supported; use api_key",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(field, "a base URL takes no query or fragment"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(err(field, "no host")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| err(field, "no port"))?;
    let default_port = if tls { 443 } else { 80 };
    let host_for_header = match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        _ => host.clone(),
    };
    let host_header = if port == default_port {
        host_for_header
    } else {
        format!("{host_for_header}:{port}")
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    Ok(UpstreamTarget {
        tls,
        host,
        port,
        base_path,
        pool_host: std::sync::Arc::from(host_header.as_str()),
        host_header,
    })
}

pub(super) fn check_model_overlap(providers: &[ProviderConfig]) -> Result<(), ConfigError> {
    let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for p in providers {
        for m in &p.models {
            if let Some(prev) = seen.insert(m.as_str(), p.name.as_str()) {
                let what = if m == "*" {
                    "the fallback \"*\"".to_string()
                } else {
                    format!("model {m:?}")
                };
                return Err(err(
                    format!("providers ({:?})", p.name),
                    format!("{what} is already served by provider {prev:?}"),
                ));
            }
        }
    }
    Ok(())
}
