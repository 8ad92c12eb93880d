//! `switchboard messages list|show|retry`: the message search and retry of the HTTP API, run
//! straight against the store a `--store` URL names, for an operator on the box. The operator
//! sees every API key's messages. Filters are read by the API's own rules
//! ([`crate::http::messages::search_request`]); pages and JSON are the API's. The human output
//! masks addresses (as logs do); `--format json` shows them in full, as the API does.
//!
//! A retried message is put back in the store's queue: a service running on that store picks it
//! up (its sweep reads the queue every 2 s; instances sharing a PostgreSQL queue claim due
//! messages every 200 ms).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use switchboard_providers::mask_recipient;

use super::{print_out, Format, StoreArgs, EXIT_CANNOT_RUN, EXIT_INVALID};
use crate::http::messages::{search_request, SearchPage};
use crate::http::paging::Cursor;
use crate::http::ApiError;
use crate::store::{MessageStore, MessageView, Retried};

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List messages, newest first, one page at a time (`--cursor` for the next: a page may be
    /// short, or empty, with more to follow).
    List(ListArgs),
    /// Show one message as `GET /v1/messages/{id}` does.
    Show(IdArgs),
    /// Put a failed message back in the queue with a fresh budget of attempts.
    Retry(IdArgs),
}

/// The filters of `GET /v1/messages`, as flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// queued, sending, sent, failed or received.
    #[arg(long)]
    pub status: Option<String>,
    /// What receipts say: sent, deferred, delivered, undelivered, bounced, dropped, opened, read.
    #[arg(long = "delivery-status", alias = "delivery_status")]
    pub delivery_status: Option<String>,
    /// The exact channel (`sms` does not list `mms`).
    #[arg(long)]
    pub channel: Option<String>,
    /// The provider that handled the message.
    #[arg(long)]
    pub provider: Option<String>,
    /// The recipient, compared normalised (`+1 (555) 000-1111`, `Bob@Example.com`).
    #[arg(long)]
    pub to: Option<String>,
    /// Created at or after this RFC 3339 date-time.
    #[arg(long)]
    pub since: Option<String>,
    /// Created before this RFC 3339 date-time.
    #[arg(long)]
    pub until: Option<String>,
    /// Messages per page, 1 to 200 (default 50).
    #[arg(long)]
    pub limit: Option<String>,
    /// The `next_cursor` of the page before.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The message's id.
    pub id: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
enum Failed {
    /// A flag's value is refused (as the API would refuse the parameter).
    #[error("--{}: {message}", field.replace('_', "-"))]
    Flag { field: String, message: String },
    #[error("no message {0}")]
    NotFound(String),
    #[error("message {id} is {status}: only a failed message can be retried")]
    NotRetryable { id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Failed {
    fn exit_code(&self) -> u8 {
        match self {
            Failed::NotFound(_) | Failed::NotRetryable { .. } => EXIT_INVALID,
            Failed::Flag { .. } | Failed::Store(_) => EXIT_CANNOT_RUN,
        }
    }
}

pub fn run(command: MessagesCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            MessagesCommand::List(args) => list(&args).await,
            MessagesCommand::Show(args) => show(&args).await,
            MessagesCommand::Retry(args) => retry(&args).await,
        }
    });
    match outcome {
        Ok(output) => {
            print_out(&output);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchboard: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn open(store: &StoreArgs) -> Result<std::sync::Arc<dyn MessageStore>, Failed> {
    // The in-memory store's retention does not matter here: it starts empty.
    Ok(crate::store::open(&store.url, 0).await?)
}

async fn list(args: &ListArgs) -> Result<String, Failed> {
    let flags = [
        ("status", &args.status),
        ("delivery_status", &args.delivery_status),
        ("channel", &args.channel),
        ("provider", &args.provider),
        ("to", &args.to),
        ("since", &args.since),
        ("until", &args.until),
        ("limit", &args.limit),
        ("cursor", &args.cursor),
    ];
    let query: HashMap<String, String> =
        flags.iter().filter_map(|(name, value)| Some(((*name).to_owned(), (*value).clone()?))).collect();
    let (filter, page) = search_request(&query).map_err(|error| match error {
        ApiError::InvalidField { field, message } => Failed::Flag { field, message },
        other => Failed::Flag { field: "query".into(), message: format!("{other:?}") },
    })?;
    let listed = open(&args.store).await?.search(&filter, page).await?;
    let next = listed.next.map(|position| Cursor::Search(position).encode());
    Ok(match args.format {
        Format::Human => table(&listed.items, next.as_deref()),
        Format::Json => pretty(&SearchPage { messages: listed.items, next_cursor: next }),
    })
}

async fn show(args: &IdArgs) -> Result<String, Failed> {
    let view =
        open(&args.store).await?.get(&args.id).await?.ok_or_else(|| Failed::NotFound(args.id.clone()))?;
    Ok(match args.format {
        Format::Json => pretty(&view),
        Format::Human => details(&view),
    })
}

async fn retry(args: &IdArgs) -> Result<String, Failed> {
    let store = open(&args.store).await?;
    match store.retry(&args.id, None).await? {
        Retried::Queued | Retried::Replay => {}
        Retried::NotFound | Retried::KeyReused => return Err(Failed::NotFound(args.id.clone())),
        Retried::NotRetryable(status) => {
            return Err(Failed::NotRetryable { id: args.id.clone(), status: status.as_str() })
        }
    }
    let view = store.get(&args.id).await?.ok_or_else(|| Failed::NotFound(args.id.clone()))?;
    Ok(match args.format {
        Format::Json => pretty(&json!({"id": view.id, "status": view.status, "channel": view.channel})),
        Format::Human => format!(
            "{}: {} again, with a fresh budget of attempts; a service on this store sends it\n",
            view.id,
            view.status.as_str()
        ),
    })
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).map(|s| s + "\n").unwrap_or_default()
}

fn time(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// One line per message, addresses masked; how to get the next page last. A page may be short,
/// or empty, with more to follow (a search stops reading after a bounded number of messages).
fn table(messages: &[MessageView], next: Option<&str>) -> String {
    if messages.is_empty() {
        return match next {
            Some(next) => format!("no messages on this page; more may follow: --cursor {next}\n"),
            None => "no messages\n".to_owned(),
        };
    }
    let rows: Vec<[String; 7]> = messages
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                time(m.created_at),
                m.channel.to_string(),
                m.status.as_str().to_owned(),
                m.delivery_status.map_or("-", |s| s.as_str()).to_owned(),
                m.provider.as_deref().unwrap_or("-").to_owned(),
                mask_recipient(&m.to),
            ]
        })
        .collect();
    let header = ["ID", "CREATED", "CHANNEL", "STATUS", "DELIVERY", "PROVIDER", "TO"].map(str::to_owned);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| std::iter::once(&header).chain(&rows).map(|row| row[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(next) = next {
        out.push_str(&format!("more: --cursor {next}\n"));
    }
    out
}

/// A message's fields, attempts and timeline, addresses masked.
fn details(m: &MessageView) -> String {
    let mut out = format!(
        "id:          {}\nchannel:     {} ({})\nfrom:        {}\nto:          {}\nstatus:      {}\n",
        m.id,
        m.channel,
        m.direction.as_str(),
        mask_recipient(&m.from),
        mask_recipient(&m.to),
        m.status.as_str()
    );
    let optional = |value: Option<&str>| value.unwrap_or("-").to_owned();
    out.push_str(&format!("delivery:    {}\n", optional(m.delivery_status.map(|s| s.as_str()))));
    out.push_str(&format!("provider:    {}\n", optional(m.provider.as_deref())));
    if let Some(error) = &m.error {
        out.push_str(&format!("error:       {}: {}\n", error.code.as_str(), error.message));
    }
    if !m.tags.is_empty() {
        out.push_str(&format!("tags:        {}\n", m.tags.join(", ")));
    }
    out.push_str(&format!("created:     {}\nupdated:     {}\n", time(m.created_at), time(m.updated_at)));
    if !m.attempts.is_empty() {
        out.push_str("attempts:\n");
        for (n, a) in m.attempts.iter().enumerate() {
            let error = a.error_message.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            out.push_str(&format!(
                "  {}. {} {} {} {} ms{error}\n",
                n + 1,
                time(a.time),
                a.provider,
                a.outcome.as_str(),
                a.latency_ms
            ));
        }
    }
    out.push_str("events:\n");
    for e in &m.events {
        let provider = e.provider.as_deref().map(|p| format!(" {p}")).unwrap_or_default();
        let detail = if e.detail.is_null() { String::new() } else { format!(" {}", e.detail) };
        out.push_str(&format!("  {} {}{provider}{detail}\n", time(e.time), e.kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty page with a cursor is not the end: it says how to go on.
    #[test]
    fn an_empty_page_with_a_cursor_says_more_may_follow() {
        assert_eq!(table(&[], None), "no messages\n");
        assert_eq!(table(&[], Some("czE3")), "no messages on this page; more may follow: --cursor czE3\n");
    }
}
