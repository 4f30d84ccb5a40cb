//! `dmrelay send` and `dmrelay inbox`: the client commands, thin over [`dmrelay::client`].
//!
//! Each command loads the secret key file, builds a [`Client`] for `--node`, runs inside an
//! actix system (awc is single-threaded), and turns the outcome into lines on stdout (messages,
//! sentences, or one JSON object per line with `--json`) and a sentence on stderr for failures.
//!
//! Exit codes: 0 done; 1 the node refused (its SPEC `detail` and code are printed); 2 a local
//! problem (arguments, key file); 3 the node could not be reached or is not a dmrelay node.

use clap::Args;
use dmrelay::client::display::{safe_for_terminal, utc_time};
use dmrelay::client::{
    Client, ClientError, ClientOptions, Content, DepositStatus, Received, load_secret_key,
};
use dmrelay::peer::policy;
use dmrelay::protocol::{MailboxKey, MsgId};
use ed25519_dalek::SigningKey;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// First and longest wait before `--follow` polls again after a failure.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// `--follow` polls at most once a second while the node answers empty polls at once.
const MIN_EMPTY_POLL_INTERVAL: Duration = Duration::from_secs(1);

const EXIT_REFUSED: u8 = 1;
const EXIT_LOCAL: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

/// Where the node is and how to trust it (shared by `send` and `inbox`).
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's client URL, e.g. http://127.0.0.1:8787.
    #[arg(long, value_name = "URL")]
    node: String,
    /// Your secret key file (made by `dmrelay keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Extra CA certificates (PEM) to trust for an https:// node.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "The message is encrypted for the recipient (SPEC Appendix A) before it \
leaves this machine. Exit codes: 0 taken (accepted, duplicate or already acked), 1 refused by the \
node, 2 local problem, 3 node unreachable."
)]
pub struct SendArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The recipient's mailbox: their public key (64 lowercase hex).
    #[arg(long, value_name = "MAILBOX_PUBKEY")]
    to: String,
    /// The message text [default: read stdin].
    #[arg(long, conflicts_with = "file", allow_hyphen_values = true)]
    text: Option<String>,
    /// Read the message text from a file (one final newline is dropped).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// How long relays keep the message if it is not read, in seconds.
    #[arg(long, default_value_t = 86_400, value_name = "S")]
    ttl: u64,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Every message is verified (sender signature, addressed to you) and \
decrypted here. One that does not decrypt is shown as undecryptable, one whose signature fails \
as bad_signature; --ack acknowledges those too. Without --ack, read messages stay pending on the \
node. Exit codes: 0 done (Ctrl-C ends --follow with 0), 1 refused by the node, 2 local problem, \
3 node unreachable."
)]
pub struct InboxArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Wait up to S seconds (0..=30) for mail when the mailbox is empty [default: 0, 30 with --follow].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(0..=30))]
    wait: Option<u64>,
    /// Acknowledge every message shown, so that no relay delivers it again.
    #[arg(long)]
    ack: bool,
    /// Keep long-polling and print messages as they arrive, until interrupted.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line: {"msg_id","sender","sent_at","text"} or {"msg_id","sender","error"}.
    #[arg(long)]
    json: bool,
    /// Most messages per poll (1..=100).
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    limit: u64,
}

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        let code = match &err {
            ClientError::Refused(_) => EXIT_REFUSED,
            ClientError::Transport { .. } | ClientError::BadReply { .. } => EXIT_UNREACHABLE,
            ClientError::Key(_)
            | ClientError::Invalid(_)
            | ClientError::Randomness(_)
            | ClientError::Undecryptable(_)
            | ClientError::Rejected(_) => EXIT_LOCAL,
        };
        let message = match &err {
            ClientError::Refused(spec) => {
                format!("the node refused: {} ({})", spec.detail, spec.code)
            }
            other => other.to_string(),
        };
        Self { code, message }
    }
}

fn local(message: impl ToString) -> Failure {
    Failure {
        code: EXIT_LOCAL,
        message: message.to_string(),
    }
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tell!("dmrelay: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn connect(args: &NodeArgs) -> Result<(SigningKey, Client), Failure> {
    let key = load_secret_key(&args.key).map_err(|e| Failure::from(ClientError::from(e)))?;
    let options = ClientOptions {
        ca_file: args.ca_file.clone(),
        ..ClientOptions::default()
    };
    let client = Client::new(&args.node, &options)?;
    Ok((key, client))
}

/// `dmrelay send`
pub fn send(args: SendArgs) -> ExitCode {
    finish(send_inner(args))
}

fn send_inner(args: SendArgs) -> Result<(), Failure> {
    let to = MailboxKey::parse("--to", &args.to).map_err(|_| {
        local(format!(
            "--to {:?} is not a mailbox key: give the recipient's public key, 64 lowercase hex characters (what `dmrelay keygen` printed for them).",
            args.to
        ))
    })?;
    let text = message_text(&args)?;
    let (key, client) = connect(&args.node)?;
    let (envelope, status) = actix_rt::System::new()
        .block_on(async { client.send_text(&key, &to, &text, args.ttl).await })?;
    let id = envelope.msg_id.as_str();
    let node = client.node_url();
    match status {
        DepositStatus::Accepted => {
            println!("Message {id} accepted by {node}, encrypted for mailbox {to}.")
        }
        DepositStatus::Duplicate => {
            println!("Message {id}: {node} already held this exact message (duplicate).")
        }
        DepositStatus::Acked => println!(
            "Message {id}: the recipient has already read and acknowledged it (acked); nothing was stored."
        ),
    }
    Ok(())
}

fn message_text(args: &SendArgs) -> Result<String, Failure> {
    if let Some(text) = &args.text {
        return Ok(text.clone());
    }
    let mut text = if let Some(path) = &args.file {
        std::fs::read_to_string(path)
            .map_err(|e| local(format!("cannot read {}: {e}", path.display())))?
    } else {
        if std::io::stdin().is_terminal() {
            tell!("Type the message, then Ctrl-D on a line of its own:");
        }
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| local(format!("cannot read the message from stdin: {e}")))?;
        text
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// `dmrelay inbox`
pub fn inbox(args: InboxArgs) -> ExitCode {
    finish(inbox_inner(args))
}

fn inbox_inner(args: InboxArgs) -> Result<(), Failure> {
    let (key, client) = connect(&args.node)?;
    actix_rt::System::new().block_on(async move {
        if args.follow {
            follow(&args, &key, &client).await
        } else {
            read_once(&args, &key, &client).await
        }
    })
}

/// One poll (then, with `--ack`, more polls while the node says more are waiting).
async fn read_once(args: &InboxArgs, key: &SigningKey, client: &Client) -> Result<(), Failure> {
    let mut wait_s = args.wait.unwrap_or(0);
    let mut shown = 0usize;
    loop {
        let inbox = client.inbox(key, args.limit, wait_s).await?;
        wait_s = 0;
        shown += inbox.messages.len();
        print_messages(&inbox.messages, args.json)?;
        if !args.ack {
            if inbox.has_more {
                tell!(
                    "{} more message(s) are waiting; acknowledge these with --ack to see the next ones.",
                    inbox.pending.saturating_sub(inbox.messages.len() as u64)
                );
            }
            break;
        }
        let removed = acknowledge(client, key, &inbox.messages).await?;
        // Stop when nothing was removed too: the next page would be this one again.
        if !inbox.has_more || removed == 0 {
            break;
        }
    }
    if shown == 0 && !args.json {
        println!("No messages.");
    }
    Ok(())
}

/// Long polls until Ctrl-C (or SIGTERM), which ends with success.
async fn follow(args: &InboxArgs, key: &SigningKey, client: &Client) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| local(format!("cannot watch for Ctrl-C: {e}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| local(format!("cannot watch for SIGTERM: {e}")))?;
    tell!(
        "Waiting for messages on {} (Ctrl-C to stop)…",
        client.node_url()
    );
    tokio::select! {
        result = follow_loop(args, key, client) => result,
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
    }
}

async fn follow_loop(args: &InboxArgs, key: &SigningKey, client: &Client) -> Result<(), Failure> {
    let wait_s = args.wait.unwrap_or(dmrelay::client::http::MAX_WAIT_S);
    // Each message is shown once, even while it stays pending (without --ack).
    let mut seen: std::collections::HashSet<Option<MsgId>> = Default::default();
    // Failed polls in a row: the retry waits 1, 2, 4 … 30 s, never less than the node's
    // Retry-After (capped), as the peer links do.
    let mut failures = 0u32;
    let retry_delay = |failures: u32, retry_after: Option<Duration>| {
        policy::retry_delay(failures, retry_after, RETRY_BASE, RETRY_MAX, 1.0)
    };
    loop {
        let asked_at = std::time::Instant::now();
        let inbox = match client.inbox(key, args.limit, wait_s).await {
            Ok(inbox) => {
                failures = 0;
                inbox
            }
            Err(err) if retryable(&err) => {
                failures = failures.saturating_add(1);
                let retry_after = match &err {
                    ClientError::Refused(spec) => spec.retry_after_s.map(Duration::from_secs),
                    _ => None,
                };
                let delay = retry_delay(failures, retry_after);
                tell!("dmrelay: {err} Retrying in {} s.", delay.as_secs());
                actix_rt::time::sleep(delay).await;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let (fresh, seen_before): (Vec<Received>, Vec<Received>) = inbox
            .messages
            .into_iter()
            .partition(|m| !seen.contains(&m.msg_id));
        print_messages(&fresh, args.json)?;
        let nothing_new = fresh.is_empty();
        if args.ack {
            // Every message of the page, shown now or before (an ack that failed earlier).
            let page: Vec<Received> = fresh.iter().chain(&seen_before).cloned().collect();
            match acknowledge(client, key, &page).await {
                Ok(_) => {}
                // Not acknowledged: they stay pending and are acknowledged on a later poll.
                Err(Failure { code, message }) if code == EXIT_UNREACHABLE => {
                    let delay = retry_delay(1, None);
                    tell!("dmrelay: {message} Retrying in {} s.", delay.as_secs());
                    actix_rt::time::sleep(delay).await;
                }
                Err(failure) => return Err(failure),
            }
        }
        seen.extend(fresh.into_iter().map(|m| m.msg_id));
        if inbox.pending == 0 && asked_at.elapsed() < MIN_EMPTY_POLL_INTERVAL {
            // An empty answer before `wait_s` was up: the node does not hold polls (an older
            // node, or one holding too many, SPEC §6.2). Pace the polls instead of spinning.
            actix_rt::time::sleep(MIN_EMPTY_POLL_INTERVAL).await;
        } else if nothing_new && inbox.pending > 0 {
            // Only messages already shown (not acknowledged, or that the node keeps sending):
            // the node answers at once while they are pending, so wait before asking again.
            actix_rt::time::sleep(Duration::from_secs(wait_s.max(1))).await;
        }
    }
}

/// Worth trying again later: the node is down or busy, not saying no.
fn retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Transport { .. } => true,
        ClientError::Refused(spec) => matches!(spec.code.as_str(), "rate_limited" | "unavailable"),
        _ => false,
    }
}

/// Acknowledges every shown message that has a well-formed id; returns how many the node
/// removed.
async fn acknowledge(
    client: &Client,
    key: &SigningKey,
    messages: &[Received],
) -> Result<u64, Failure> {
    let ids: Vec<MsgId> = messages.iter().filter_map(|m| m.msg_id.clone()).collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let report = client.ack(key, &ids).await?;
    tell!(
        "Acknowledged {} message(s) ({} removed on {}).",
        ids.len(),
        report.removed,
        client.node_url()
    );
    Ok(report.removed)
}

fn print_messages(messages: &[Received], json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for message in messages {
        let line = if json {
            json_line(message)
        } else {
            human_lines(message)
        };
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| local(format!("cannot write to stdout: {e}")))?;
    }
    Ok(())
}

/// `{"msg_id","sender","sent_at","text"}` or `{"msg_id","sender","error"}`.
fn json_line(message: &Received) -> String {
    let msg_id = message.msg_id.as_ref().map(MsgId::as_str);
    let value = match (&message.content, message.error_code()) {
        (Content::Read(plain), _) => serde_json::json!({
            "msg_id": msg_id,
            "sender": message.sender,
            "sent_at": plain.sent_at,
            "text": plain.text,
        }),
        (_, error) => serde_json::json!({
            "msg_id": msg_id,
            "sender": message.sender,
            "error": error,
        }),
    };
    value.to_string()
}

fn human_lines(message: &Received) -> String {
    let id = message
        .msg_id
        .as_ref()
        .map_or("(no valid id)", MsgId::as_str);
    let sender = message.sender.as_deref().unwrap_or("(unknown sender)");
    match &message.content {
        Content::Read(plain) => format!(
            "From {} at {} (msg {id}):\n{}\n",
            safe_for_terminal(sender),
            utc_time(plain.sent_at),
            indent(&safe_for_terminal(&plain.text))
        ),
        Content::Undecryptable(why) => format!(
            "From {} at {} (msg {id}): UNDECRYPTABLE: {why}.\n",
            safe_for_terminal(sender),
            message.created_at.map_or("?".into(), utc_time)
        ),
        Content::Rejected(why) => format!(
            "Msg {} claiming to be from {}: REJECTED ({}): {why}.\n",
            safe_for_terminal(id),
            safe_for_terminal(sender),
            message.error_code().unwrap_or("rejected")
        ),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
