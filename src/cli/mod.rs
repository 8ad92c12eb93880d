//! The command line: argument parsing (clap) and the mapping of outcomes to exit codes.
//!
//! Exit codes: 0 success (config valid, warnings allowed), 1 config invalid (`messages`: no such
//! message, or not retryable), 2 could not run (missing or unreadable file, bad arguments, the
//! store unreachable).

mod messages;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use switchboard_providers::{registry, SettingDoc};

use crate::auth::{hash_hex, is_key_name, ApiKeys};
use crate::config::resolved::RateLimit;
use crate::config::{self, render_human, Environment, Report, PROVIDER_SPECS, ROUTE_SPECS};
use crate::dispatch::DispatchConfig;
use crate::http::guard::RequestLimits;
use crate::reload::WatchOptions;
use crate::routing;
use crate::serve::{ServeError, ServeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Routes outbound messages to providers chosen from routes.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API and the dispatch workers.
    Serve(ServeArgs),
    /// Check a routes.toml and report every problem with its position.
    Validate(ValidateArgs),
    /// Create or upgrade the message store's schema, then exit.
    Migrate(StoreArgs),
    /// List the registered provider kinds, their channels and settings.
    Providers {
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show which rule and providers a message would get, in order, with every setting's
    /// value and where it came from.
    Explain(ExplainArgs),
    /// Find, show and retry stored messages, straight in the store (every API key's messages):
    /// for an operator on the box.
    #[command(subcommand)]
    Messages(messages::MessagesCommand),
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json` serves).
    Openapi,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The message's channel.
    #[arg(long)]
    pub channel: String,
    /// The recipient: an E.164 number or an email address.
    #[arg(long)]
    pub to: String,
    /// A message tag (repeat for several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG", default_value = "routes.toml")]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random API key (once: it is stored nowhere) and the `NAME:SHA256HEX` entry
    /// to configure for it.
    New {
        /// The key's name: 1–64 of A–Z a–z 0–9 _ . -
        name: String,
        /// Give the key the admin role (the /admin routes).
        #[arg(long)]
        admin: bool,
    },
    /// Print a fresh secret for signing status callbacks (`whsec_` and base64 of 32 random
    /// bytes), to set as SWITCHBOARD_CALLBACK_SECRET and give to the callback receivers.
    CallbackSecret,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG", default_value = "routes.toml")]
    pub config: PathBuf,
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Messages that may wait for a worker before sends are refused with 503 queue_full.
    #[arg(long, env = "SWITCHBOARD_QUEUE_CAPACITY", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// Messages dispatched concurrently.
    #[arg(long, env = "SWITCHBOARD_WORKERS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: u32,
    /// How long in-flight work may take to finish on shutdown (e.g. `10s`, `500ms`).
    #[arg(long, env = "SWITCHBOARD_GRACE_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace_period: std::time::Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Largest body of a provider's own inbound request (`/v1/inbound/…`), in bytes: SendGrid posts
    /// an email with its attachments (they are read and dropped, not stored).
    #[arg(long, env = "SWITCHBOARD_MAX_INBOUND_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_inbound_body_bytes: usize,
    /// Lets `status_callback` URLs be plain http to a loopback host (127.0.0.0/8, ::1,
    /// localhost): for a receiver on this machine, and tests. Without it callbacks are https
    /// only, and never to a loopback, private or link-local address.
    #[arg(long, env = "SWITCHBOARD_ALLOW_LOOPBACK_CALLBACKS")]
    pub allow_loopback_callbacks: bool,
    /// Finished messages the in-memory store keeps for status queries (oldest forgotten first).
    #[arg(long, env = "SWITCHBOARD_MEMORY_RETENTION", default_value_t = 20_000)]
    pub memory_retention: usize,
    /// How often the config file's content is checked for changes even without file events.
    #[arg(long, env = "SWITCHBOARD_RELOAD_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_poll_interval: std::time::Duration,
    /// Quiet time after a file event before reloading (a burst of writes reloads once).
    #[arg(long, env = "SWITCHBOARD_RELOAD_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reload_debounce: std::time::Duration,
    #[command(flatten)]
    pub store: StoreArgs,
    /// How long finished messages and their attempts are kept (durable stores).
    #[arg(long, env = "SWITCHBOARD_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,
    /// A file of API keys, one `NAME:SHA256HEX[:admin]` per line (`#` comments), in addition to
    /// those in SWITCHBOARD_API_KEYS (comma-separated).
    #[arg(long, env = "SWITCHBOARD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Serve /metrics without an API key (for a scraper on a private network).
    #[arg(long, env = "SWITCHBOARD_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Send requests per second allowed to each API key (token bucket); beyond: 429.
    #[arg(long, env = "SWITCHBOARD_KEY_RATE_LIMIT", default_value_t = 100.0, value_parser = positive_f64)]
    pub key_rate_limit: f64,
    /// Burst of send requests an API key may make at once.
    #[arg(long, env = "SWITCHBOARD_KEY_RATE_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub key_rate_burst: u32,
    /// Requests answered at once; beyond: 503 `overloaded` (health checks are exempt).
    #[arg(long, env = "SWITCHBOARD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Total size of a request's headers, in bytes; beyond: 431.
    #[arg(long, env = "SWITCHBOARD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Longest a request body may take to arrive (e.g. `10s`); beyond: 408.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Longest a request's line and headers may take to arrive, and a kept-alive connection may
    /// stay idle (e.g. `10s`); beyond: 408, or an idle connection is closed.
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
}

fn positive_f64(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err(format!("`{text}` is not a number greater than 0")),
    }
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Where messages are kept: `sqlite://PATH` (durable, single instance) or `memory://`
    /// (nothing survives a restart).
    #[arg(long = "store", env = "SWITCHBOARD_STORE", default_value = "sqlite://switchboard.db")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The config file.
    #[arg(long, env = "SWITCHBOARD_CONFIG", default_value = "routes.toml")]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

const EXIT_INVALID: u8 = 1;
const EXIT_CANNOT_RUN: u8 = 2;

/// Parses the process arguments and runs the command.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints usage errors (exit 2) and --help/--version (exit 0) itself.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_CANNOT_RUN));
        }
    };
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Validate(args) => validate(&args),
        Command::Migrate(args) => migrate(&args),
        Command::Providers { format } => providers(format),
        Command::Keys(KeysCommand::New { name, admin }) => new_key(&name, admin),
        Command::Keys(KeysCommand::CallbackSecret) => new_callback_secret(),
        Command::Explain(args) => explain(&args),
        Command::Messages(command) => messages::run(command),
        Command::Openapi => {
            print_out(&crate::http::openapi::render(&crate::http::document()));
            ExitCode::SUCCESS
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let format = std::env::var("SWITCHBOARD_LOG_FORMAT").ok();
    let filter = std::env::var("RUST_LOG").ok();
    if let Err(error) = crate::logging::init(format.as_deref(), filter.as_deref()) {
        eprintln!("switchboard: {error}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let api_keys = match ApiKeys::load(
        std::env::var("SWITCHBOARD_API_KEYS").ok().as_deref(),
        args.api_keys_file.as_deref(),
    ) {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("switchboard: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let callback_secret = match crate::callbacks::CallbackSecret::from_env() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("switchboard: {}: {error}", crate::callbacks::SECRET_ENV);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let options = ServeOptions {
        config: args.config,
        listen: args.listen,
        dispatch: DispatchConfig {
            queue_capacity: args.queue_capacity as usize,
            workers: args.workers as usize,
        },
        grace_period: args.grace_period,
        body_limit: args.max_body_bytes,
        inbound_body_limit: args.max_inbound_body_bytes,
        allow_loopback_callbacks: args.allow_loopback_callbacks,
        callback_secret,
        memory_retention: args.memory_retention,
        reload: WatchOptions {
            debounce: args.reload_debounce,
            poll_interval: args.reload_poll_interval.max(std::time::Duration::from_millis(10)),
        },
        store: args.store.url,
        retention: args.retention,
        api_keys,
        limits: RequestLimits {
            metrics_public: args.metrics_public,
            per_key: RateLimit { per_second: args.key_rate_limit, burst: args.key_rate_burst },
            max_concurrent: args.max_concurrent_requests as usize,
            max_header_bytes: args.max_header_bytes,
            body_timeout: args.request_timeout,
            header_timeout: args.header_timeout,
        },
    };
    let outcome = runtime.block_on(crate::serve::serve(options));
    // A blocking task still running (a config read stuck on a hung file system) must not hold
    // the process: dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error}");
            match error {
                ServeError::Invalid { .. } => ExitCode::from(EXIT_INVALID),
                _ => ExitCode::from(EXIT_CANNOT_RUN),
            }
        }
    }
}

/// `keys new`: the key on the first line, the entry on the second (stdout); how to use them on
/// stderr, so `switchboard keys new app | head -1` gives just the key.
fn new_key(name: &str, admin: bool) -> ExitCode {
    if !is_key_name(name) {
        eprintln!("switchboard: `{name}` is not a key name (1–64 of A–Z a–z 0–9 _ . -)");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let key = match crate::auth::new_key() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("switchboard: no randomness from the operating system: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let role = if admin { ":admin" } else { "" };
    print_out(&format!("{key}\n{name}:{}{role}\n", hash_hex(&key)));
    eprintln!(
        "line 1 is the key: give it to the client (it is shown only now). Line 2 is the entry to add to \
         SWITCHBOARD_API_KEYS or the --api-keys-file."
    );
    ExitCode::SUCCESS
}

/// `keys callback-secret`: the secret alone on stdout, so `$(switchboard keys callback-secret)`
/// gives just it; how to use it on stderr.
fn new_callback_secret() -> ExitCode {
    let secret = match crate::callbacks::new_secret_text() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("switchboard: no randomness from the operating system: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    print_out(&format!("{secret}\n"));
    eprintln!(
        "set it as {} for `switchboard serve`, and give it to the callback receivers: they \
         verify the webhook-signature header with it (Standard Webhooks).",
        crate::callbacks::SECRET_ENV
    );
    ExitCode::SUCCESS
}

fn migrate(args: &StoreArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let url = args.url.as_str();
    let outcome = match url.strip_prefix("sqlite://") {
        Some(path) => runtime.block_on(crate::store::SqliteStore::migrate(path)),
        None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            runtime.block_on(crate::store::PostgresStore::migrate(url))
        }
        None if url.starts_with("memory:") => Ok(Vec::new()),
        None => Err(crate::store::StoreError::UnsupportedUrl(crate::store::redact_url(url))),
    };
    match outcome {
        Ok(versions) => {
            let shown = crate::store::redact_url(url);
            print_out(&format!("{shown}: schema up to date (migrations applied: {versions:?})\n"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchboard: {error}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let loaded = match config::load_file(&args.config, &Environment::from_process()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("switchboard: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let output = match args.format {
        Format::Json => {
            let report = Report::new(&loaded.source, &loaded.diagnostics);
            serde_json::to_string_pretty(&report).map(|s| s + "\n").unwrap_or_default()
        }
        Format::Human => {
            let mut out: String =
                loaded.diagnostics.iter().map(|d| render_human(&loaded.source, d) + "\n").collect();
            let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
            let summary = match &loaded.config {
                Some(config) => format!(
                    "{}: valid ({}, {}), {}\n",
                    loaded.source.name,
                    plural(config.providers.len(), "provider"),
                    plural(config.routes.len(), "route"),
                    plural(loaded.warnings(), "warning"),
                ),
                None => format!(
                    "{}: invalid: {}, {}\n",
                    loaded.source.name,
                    plural(loaded.errors(), "error"),
                    plural(loaded.warnings(), "warning")
                ),
            };
            out.push_str(&summary);
            out
        }
    };
    print_out(&output);
    if loaded.errors() > 0 {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn refused_by_api(channel: &str, to: &str, tags: &[String]) -> Option<String> {
    use crate::http::ApiError;
    crate::http::payload::recipient_refusal(channel, to, tags).map(|refusal| match refusal {
        ApiError::InvalidField { message, .. } | ApiError::InvalidJson(message) => message,
        other => format!("{other:?}"),
    })
}

/// `explain`: exit 0 with the explanation; 1 (diagnostics on stderr) for an invalid config; 2
/// when the file cannot be read, the channel has no route, or the send API would refuse the
/// recipient or a tag.
fn explain(args: &ExplainArgs) -> ExitCode {
    let loaded = match config::load_file(&args.config, &Environment::from_process()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("switchboard: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let Some(resolved) = &loaded.config else {
        for diagnostic in loaded.diagnostics.iter().filter(|d| d.severity == config::Severity::Error) {
            eprintln!("{}", render_human(&loaded.source, diagnostic));
        }
        eprintln!(
            "switchboard: {} is invalid: run `switchboard validate` for the whole report",
            loaded.source.name
        );
        return ExitCode::from(EXIT_INVALID);
    };
    let Some(route) = resolved.routes.iter().find(|r| r.channel.as_str() == args.channel) else {
        let routed: Vec<&str> = resolved.routes.iter().map(|r| r.channel.as_str()).collect();
        eprintln!(
            "switchboard: channel `{}` has no route in {} (routed: {}); its messages are refused with no_route",
            args.channel,
            loaded.source.name,
            routed.join(", ")
        );
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let refusal = refused_by_api(&args.channel, &args.to, &args.tags)
        .or_else(|| crate::accept::check_country(route, &args.to).err().map(|refusal| refusal.to_string()));
    if let Some(refusal) = refusal {
        eprintln!("switchboard: the send API would refuse this message: {refusal}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let by_name = |name: &str| resolved.providers.iter().find(|p| p.name == name);
    let explanation = routing::explain::explain(route, by_name, &args.to, &args.tags);
    let output = match args.format {
        Format::Json => serde_json::to_string_pretty(&explanation).map(|s| s + "\n").unwrap_or_default(),
        Format::Human => routing::explain::render_human(&explanation),
    };
    print_out(&output);
    ExitCode::SUCCESS
}

/// `switchboard providers --format json`.
#[derive(Debug, Serialize)]
pub struct Catalog {
    pub kinds: Vec<KindEntry>,
    /// Settings every provider has, whatever its kind.
    pub common_settings: Vec<SettingDoc>,
    /// Settings of routes (also allowed in `[defaults]`).
    pub route_settings: Vec<SettingDoc>,
}

#[derive(Debug, Serialize)]
pub struct KindEntry {
    pub name: &'static str,
    pub channels: &'static [&'static str],
    pub description: &'static str,
    pub settings: Vec<SettingDoc>,
}

pub fn catalog() -> Catalog {
    let doc = |spec: &config::Spec| SettingDoc {
        name: spec.key.to_owned(),
        type_name: spec.ty.name().to_owned(),
        required: false,
        default: spec.default.map(|d| d.to_json()),
        doc: spec.doc.to_owned(),
    };
    Catalog {
        kinds: registry()
            .into_iter()
            .map(|r| KindEntry {
                name: r.kind,
                channels: r.channels,
                description: r.description,
                settings: r.settings(),
            })
            .collect(),
        common_settings: std::iter::once(channels_doc()).chain(PROVIDER_SPECS.iter().map(doc)).collect(),
        route_settings: ROUTE_SPECS.iter().map(doc).collect(),
    }
}

/// `channels` is read by the loader, not by a spec: documented here by hand.
fn channels_doc() -> SettingDoc {
    SettingDoc {
        name: "channels".to_owned(),
        type_name: "array".to_owned(),
        required: false,
        default: None,
        doc: "Channels this provider serves: some of those its kind serves (any channel names for a kind \
              that serves `*`). Default: all its kind serves (sms, mms, email for `*`)."
            .to_owned(),
    }
}

fn providers(format: Format) -> ExitCode {
    let catalog = catalog();
    let output = match format {
        Format::Json => serde_json::to_string_pretty(&catalog).map(|s| s + "\n").unwrap_or_default(),
        Format::Human => {
            let mut out = String::new();
            let settings_table = |out: &mut String, settings: &[SettingDoc]| {
                for s in settings {
                    let default = s.default.as_ref().map_or_else(
                        || if s.required { "required".to_owned() } else { "-".to_owned() },
                        |d| format!("default {d}"),
                    );
                    out.push_str(&format!(
                        "    {:<28} {:<8} {:<16} {}\n",
                        s.name, s.type_name, default, s.doc
                    ));
                }
            };
            for kind in &catalog.kinds {
                out.push_str(&format!(
                    "{}: {}\n  channels: {}\n  settings:\n",
                    kind.name,
                    kind.description,
                    kind.channels.join(", ")
                ));
                settings_table(&mut out, &kind.settings);
                out.push('\n');
            }
            out.push_str("common provider settings (any kind; also in [kinds.<kind>] and [defaults]):\n");
            settings_table(&mut out, &catalog.common_settings);
            out.push_str("\nroute settings (in [routes.<channel>] and [defaults]):\n");
            settings_table(&mut out, &catalog.route_settings);
            out
        }
    };
    print_out(&output);
    ExitCode::SUCCESS
}

/// Writes to stdout, ignoring a closed pipe (`switchboard providers | head`).
fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
