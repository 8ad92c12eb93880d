//! `smtp`: email through an SMTP relay, with lettre.
//!
//! One connection pool per provider; `tls = "starttls"` (default, port 587), `"tls"` (implicit
//! TLS, port 465) or `"none"` (port 25; loopback relays only when credentials are set); `ca_file`
//! adds a private CA's certificates to the trusted roots. Each
//! message gets `Message-ID: <{switchboard id}@{sender's domain}>`, which is also recorded as
//! the provider message id, and is `multipart/alternative` (text + HTML) when the body is HTML.
//! Header injection is impossible: addresses are parsed as single mailboxes and a subject with
//! a line break is refused before anything is sent. Attachment URLs become links in the body.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::address::is_email;
use crate::email::{looks_like_html, text_from_html, with_attachment_links};
use crate::{
    BuildContext, Kind, OutboundMessage, Provider, Receipt, Registration, Secret, SendError, SentCredentials,
    SettingIssue, SettingsError,
};

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text. Credentials are then allowed only for a loopback relay.
    None,
    /// Plain connection upgraded with STARTTLS, which the relay must offer.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS").
    Tls,
}

/// Settings of an `smtp` provider.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// The relay's host name (checked against its certificate unless `tls = "none"`).
    pub host: String,
    /// The relay's port; default 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub tls: TlsMode,
    /// A PEM file of CA certificates trusted for the relay's certificate in addition to the
    /// built-in public roots, for a private relay whose certificate a private CA signed. Read
    /// when the config is loaded and when the provider is built (a relative path is taken from
    /// the working directory); only with `tls = "starttls"` or `"tls"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// User name for SMTP AUTH; set it together with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH. Only from the environment: `"${SMTP_PASSWORD}"`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Sender address. When set it is used instead of the message's `from`.
    #[serde(default)]
    pub from: Option<String>,
    /// Most connections kept open to the relay.
    #[serde(default = "default_pool_size")]
    #[schemars(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_pool_size() -> u32 {
    10
}

/// The contents of a `ca_file`: readable PEM holding at least one certificate, each usable as
/// a trust anchor. The error says which of these it is not.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|error| format!("`ca_file` {shown} cannot be read: {error}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("`ca_file` {shown} is not valid PEM: {error}"))?;
    if certificates.is_empty() {
        return Err(format!("`ca_file` {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|error| {
            format!("`ca_file` {shown} holds a certificate that is not usable as a CA: {error}")
        })?;
    }
    Ok(pem)
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

struct SmtpKind;

impl Kind for SmtpKind {
    const NAME: &'static str = "smtp";
    const CHANNELS: &'static [&'static str] = &["email"];
    const DESCRIPTION: &'static str = "Any SMTP relay (STARTTLS or implicit TLS, optional AUTH, pooled)";
    type Settings = SmtpSettings;

    fn validate(settings: &SmtpSettings) -> Vec<SettingIssue> {
        let mut issues = Vec::new();
        let host = settings.host.trim();
        if host.is_empty() || host.contains(['/', ' ', '@']) || host.contains("://") {
            issues.push(
                SettingIssue::new(
                    "host",
                    format!("`host` must be a host name or IP address, got {:?}", settings.host),
                )
                .with_help("for example \"smtp.example.com\"; the port goes in `port`"),
            );
        }
        if settings.port == Some(0) {
            issues.push(SettingIssue::new("port", "`port` must be between 1 and 65535"));
        }
        match (&settings.username, &settings.password) {
            (Some(_), None) => {
                issues.push(SettingIssue::new("password", "`username` is set but `password` is not"))
            }
            (None, Some(_)) => {
                issues.push(SettingIssue::new("username", "`password` is set but `username` is not"))
            }
            (Some(_), Some(password)) if password.is_blank() => {
                issues.push(SettingIssue::new("password", "`password` is empty"))
            }
            _ => {}
        }
        if settings.tls == TlsMode::None && settings.password.is_some() && !is_loopback_host(host) {
            issues.push(
                SettingIssue::new("tls", "`tls = \"none\"` would send the password in clear text").with_help(
                    "use tls = \"starttls\" or \"tls\"; plain text is allowed only for a loopback relay",
                ),
            );
        }
        if let Some(path) = &settings.ca_file {
            if settings.tls == TlsMode::None {
                issues.push(
                    SettingIssue::new("ca_file", "`ca_file` is set but `tls = \"none\"` uses no certificate")
                        .with_help("use tls = \"starttls\" or \"tls\", or remove `ca_file`"),
                );
            } else if let Err(message) = read_ca_file(path) {
                issues.push(
                    SettingIssue::new("ca_file", message)
                        .with_help("give the path of a PEM bundle of the relay's CA certificates"),
                );
            }
        }
        if let Some(from) = &settings.from {
            if !is_email(from) {
                issues.push(SettingIssue::new(
                    "from",
                    format!("`from` must be an email address like name@example.com, got {from:?}"),
                ));
            }
        }
        if settings.pool_size == 0 {
            issues.push(SettingIssue::new("pool_size", "`pool_size` must be at least 1"));
        }
        issues
    }

    fn build(settings: SmtpSettings, context: &BuildContext<'_>) -> Result<Arc<dyn Provider>, SettingsError> {
        let host = settings.host.trim();
        let builder = match settings.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|error| SettingsError::other(format!("cannot set up TLS for `{host}`: {error}")))?,
            TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|error| SettingsError::other(format!("cannot set up TLS for `{host}`: {error}")))?,
        };
        let builder = match (&settings.ca_file, settings.tls) {
            (Some(path), TlsMode::Starttls | TlsMode::Tls) => {
                let parameters = private_ca_tls(host, path)?;
                builder.tls(match settings.tls {
                    TlsMode::Tls => Tls::Wrapper(parameters),
                    _ => Tls::Required(parameters),
                })
            }
            _ => builder,
        };
        let mut builder = builder.timeout(Some(context.timeout)).pool_config(
            PoolConfig::new().max_size(settings.pool_size).idle_timeout(Duration::from_secs(60)),
        );
        if let Some(port) = settings.port {
            builder = builder.port(port);
        }
        let credentials = match (&settings.username, &settings.password) {
            (Some(username), Some(password)) => {
                builder =
                    builder.credentials(Credentials::new(username.clone(), password.expose().to_owned()));
                SentCredentials::new(sasl_payloads(username, password.expose()))
            }
            _ => SentCredentials::new(std::iter::empty::<String>()),
        };
        Ok(Arc::new(SmtpProvider { transport: builder.build(), from: settings.from, credentials }))
    }
}

/// TLS checking the relay against the built-in roots and the CA certificates in `path`.
fn private_ca_tls(host: &str, path: &Path) -> Result<TlsParameters, SettingsError> {
    let pem = read_ca_file(path)
        .map_err(|message| SettingsError { issues: vec![SettingIssue::new("ca_file", message)] })?;
    let tls_error = |error: lettre::transport::smtp::Error| {
        SettingsError::other(format!("cannot set up TLS for `{host}` with `ca_file`: {error}"))
    };
    let certificate = Certificate::from_pem(&pem).map_err(tls_error)?;
    TlsParameters::builder(host.to_owned()).add_root_certificate(certificate).build().map_err(tls_error)
}

inventory::submit! { Registration::of::<SmtpKind>() }

struct SmtpProvider {
    /// lettre bounds each socket operation by `timeout_ms`; the attempt as a whole (a relay
    /// that accepts and never greets included) is bounded by the dispatcher.
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Option<String>,
    /// The password and the SASL payloads carrying it.
    credentials: SentCredentials,
}

/// What SMTP AUTH sends (each base64-encoded on the wire, which the scrubber derives): the
/// password alone (`LOGIN`), `\0user\0password` (`PLAIN`), the `XOAUTH2` string.
fn sasl_payloads(username: &str, password: &str) -> [String; 3] {
    [
        password.to_owned(),
        format!("\u{0}{username}\u{0}{password}"),
        format!("user={username}\x01auth=Bearer {password}\x01\x01"),
    ]
}

/// The `Message-ID` for a Switchboard id sent from `from`.
fn message_id(id: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("switchboard.invalid", |(_, domain)| domain);
    format!("<{id}@{domain}>")
}

fn rejected(reason: impl Into<String>) -> SendError {
    SendError::Rejected { code: "invalid_message".into(), reason: reason.into() }
}

/// The email for a message. Every header value is checked or parsed, so nothing a client sends
/// can add a header.
fn build_email(message: &OutboundMessage, from: &str) -> Result<(Message, String), SendError> {
    let mailbox = |field: &str, value: &str| -> Result<Mailbox, SendError> {
        if !is_email(value) {
            return Err(rejected(format!("`{field}` is not a plain email address")));
        }
        value.parse().map_err(|error| rejected(format!("`{field}`: {error}")))
    };
    let id = message_id(&message.id, from);
    let mut builder = Message::builder()
        .from(mailbox("from", from)?)
        .to(mailbox("to", &message.to)?)
        .message_id(Some(id.clone()));
    if let Some(subject) = message.subject.as_deref() {
        if subject.chars().any(char::is_control) {
            return Err(rejected("the subject contains a line break or control character"));
        }
        builder = builder.subject(subject);
    }
    let html = looks_like_html(&message.body);
    let body = with_attachment_links(&message.body, &message.attachments, html);
    let email = if html {
        builder.multipart(MultiPart::alternative_plain_html(text_from_html(&body), body))
    } else {
        builder.header(ContentType::TEXT_PLAIN).body(body)
    }
    .map_err(|error| rejected(error.to_string()))?;
    Ok((email, id))
}

/// SMTP replies and failures by class: 4xx is a refusal that nothing was delivered (retry),
/// 5xx a final refusal (auth codes: our credentials), a broken connection mid-transaction may
/// have delivered the message.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let reason = error.to_string();
    let code = error.status().map(|code| code.to_string());
    if error.is_timeout() {
        return SendError::Timeout;
    }
    match code {
        Some(code) if matches!(code.as_str(), "530" | "534" | "535" | "538") => {
            SendError::Misconfigured { code, reason }
        }
        Some(code) if error.is_permanent() => SendError::Rejected { code, reason },
        Some(_) => SendError::NotSent { reason },
        // lettre does not expose its "connection" kind: failures to connect, greet or set up TLS
        // all happen before a message is written.
        None if error.is_tls() || reason.starts_with("Connection error") => SendError::NotSent { reason },
        None if error.is_client() => rejected(reason),
        None => SendError::Ambiguous { code: "smtp".into(), reason },
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn sender<'a>(&'a self, message: &'a OutboundMessage) -> &'a str {
        self.from.as_deref().unwrap_or(&message.from)
    }

    async fn send(&self, message: &OutboundMessage) -> Result<Receipt, SendError> {
        let from = self.sender(message);
        let (built, id) = build_email(message, from)?;
        self.transport.send(built).await.map_err(|error| classify(&error))?;
        Ok(Receipt { provider_message_id: Some(id) })
    }

    fn credentials_sent(&self) -> &SentCredentials {
        &self.credentials
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::find;
    use crate::test_support::{check_settings, email};

    #[test]
    fn settings() {
        let check = |settings, expected: &[&str]| check_settings("smtp", settings, expected);
        check(json!({"host": "smtp.example.com"}), &[]);
        check(
            json!({"host": "smtp.example.com", "port": 2525, "tls": "tls", "username": "u", "password": "p"}),
            &[],
        );
        check(json!({"host": "127.0.0.1", "tls": "none", "username": "u", "password": "p"}), &[]);
        check(json!({}), &["missing"]);
        check(json!({"host": "smtp://smtp.example.com"}), &["host"]);
        check(json!({"host": "smtp.example.com", "port": 0}), &["port"]);
        check(json!({"host": "smtp.example.com", "username": "u"}), &["password"]);
        check(json!({"host": "smtp.example.com", "password": "p"}), &["username"]);
        check(json!({"host": "smtp.example.com", "tls": "none", "username": "u", "password": "p"}), &["tls"]);
        check(json!({"host": "smtp.example.com", "from": "bad"}), &["from"]);
        check(json!({"host": "h", "tls": "ssl"}), &["tls"]);
    }

    /// A `ca_file` is read and checked when the settings are: unreadable, not PEM, holding no
    /// certificate or a certificate no CA could be made of, each named by the check.
    #[test]
    fn ca_file_is_checked() {
        let dir = std::env::temp_dir().join(format!("switchboard-smtp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|error| panic!("{error}"));
            path.to_string_lossy().into_owned()
        };
        let not_pem = write("not.pem", "hello, I am not a certificate\n");
        let broken = write("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let garbage = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.join("missing.pem").to_string_lossy().into_owned();
        let issues = |path: &str, tls: &str| {
            find("smtp")
                .map(|kind| kind.check(json!({"host": "relay.internal", "tls": tls, "ca_file": path})))
                .unwrap_or_default()
        };
        for (path, says) in [
            (&missing, "cannot be read"),
            (&not_pem, "holds no PEM certificate"),
            (&broken, "is not valid PEM"),
            (&garbage, "not usable as a CA"),
        ] {
            let found = issues(path, "starttls");
            assert_eq!(found.len(), 1, "{path}: {found:?}");
            assert_eq!(found[0].field.as_deref(), Some("ca_file"), "{found:?}");
            assert!(found[0].message.contains(says) && found[0].message.contains(path.as_str()), "{found:?}");
        }
        let found = issues(&not_pem, "none");
        assert!(found.len() == 1 && found[0].message.contains("tls = \"none\""), "{found:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_injection_is_refused() {
        for (subject, to) in [
            ("Hi\r\nBcc: victim@example.org", "user@example.org"),
            ("Hi\nBcc: victim@example.org", "user@example.org"),
            ("Hi", "user@example.org\r\nBcc: victim@example.org"),
            ("Hi", "User <user@example.org>, victim@example.org"),
        ] {
            let error = build_email(&email(to, Some(subject), "x", &[]), "app@example.com").err();
            assert!(matches!(error, Some(SendError::Rejected { .. })), "{subject:?} {to:?}: {error:?}");
        }
    }

    #[test]
    fn emails() {
        let (built, id) =
            build_email(&email("user@example.org", Some("Hello"), "Hi there", &[]), "app@example.com")
                .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(id, "<0190abcd@example.com>");
        let text = String::from_utf8_lossy(&built.formatted()).into_owned();
        assert!(text.contains("Message-ID: <0190abcd@example.com>"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
        let (built, _) =
            build_email(&email("user@example.org", Some("Hello"), "<p>Hi</p>", &[]), "app@example.com")
                .unwrap_or_else(|error| panic!("{error}"));
        let text = String::from_utf8_lossy(&built.formatted()).into_owned();
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("text/html"), "{text}");
    }
}
