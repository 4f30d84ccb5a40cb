//! `dmrelay status --node URL`: reads a node's `GET /status` and prints it for a person (or,
//! with `--json`, as the node sent it).
//!
//! [`fetch`] does the one HTTP request (its own actix system, so the command stays a plain
//! function); [`render`] turns the JSON into lines, relative to the local clock.

use serde_json::Value;
use std::time::Duration;

/// Fetches `{node}/status`; every failure is one sentence.
pub fn fetch(node: &str, ca_file: Option<&std::path::Path>) -> Result<Value, String> {
    let base = node.trim().trim_end_matches('/').to_string();
    let url = format!("{base}/status");
    let tls = crate::tls::client_config(ca_file).map_err(|e| format!("--ca-file: {e}"))?;
    actix_rt::System::new().block_on(async move {
        let client = crate::tls::http_client(std::sync::Arc::new(tls), Duration::from_secs(10));
        let mut response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body()
            .limit(4 << 20)
            .await
            .map_err(|e| format!("{url}: cannot read the reply: {e}"))?;
        if status == 404 {
            return Err(format!(
                "{url} answered 404: that node does not serve /status (an older dmrelay, or not a dmrelay node)"
            ));
        }
        if status != 200 {
            return Err(format!(
                "{url} answered HTTP {status}: {}",
                String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: the reply is not JSON: {e}"))
    })
}

/// "12s ago", "3m04s ago", "2h05m ago" (or "in the future" for a clock ahead of ours).
fn ago(at: u64, now: u64) -> String {
    if at > now + 1 {
        return "just now (its clock is ahead)".to_string();
    }
    let s = now.saturating_sub(at);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m{:02}s ago", s / 60, s % 60),
        _ => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
    }
}

fn event(value: &Value, now: u64, never: &str) -> String {
    match (value["at"].as_u64(), value["outcome"].as_str()) {
        (Some(at), Some(outcome)) => format!("{} ({outcome})", ago(at, now)),
        _ => never.to_string(),
    }
}

/// The lines `dmrelay status` prints for a `/status` reply, timed against `now` (unix s).
pub fn render(status: &Value, now: u64) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let number = |v: &Value| v.as_i64().map_or("?".to_string(), |n| n.to_string());
    let mut out = format!(
        "node      {} (dmrelay {}), up {}\npending   {} envelopes\nmailboxes {} in memory\n",
        text(&status["node"]),
        text(&status["version"]),
        status["uptime_s"]
            .as_u64()
            .map_or("?".to_string(), |s| ago(now.saturating_sub(s), now)
                .trim_end_matches(" ago")
                .to_string()),
        number(&status["pending"]),
        number(&status["mailboxes_loaded"]),
    );
    let peers = status["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if peers.is_empty() {
        out.push_str("peers     none configured\n");
    }
    for peer in peers {
        out.push_str(&format!(
            "peer      {}\n  breaker             {} ({} failed pushes in a row)\n  push queue          {} items\n  last push           {}\n  last complete pull  {}\n",
            text(&peer["url"]),
            text(&peer["breaker"]),
            number(&peer["consecutive_failures"]),
            number(&peer["queue_depth"]),
            event(&peer["last_push"], now, "none yet"),
            event(&peer["last_complete_pull"], now, "none yet"),
        ));
        if !peer["last_pull_error"].is_null() {
            out.push_str(&format!(
                "  last pull failed    {}\n",
                event(&peer["last_pull_error"], now, "-")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field_a_person_needs() {
        let status = serde_json::json!({
            "ok": true, "node": "http://a:1", "version": "0.1.0", "uptime_s": 125,
            "pending": 3, "mailboxes_loaded": 2,
            "peers": [{"url": "http://b:2", "breaker": "open", "consecutive_failures": 3,
                "queue_depth": 7, "last_push": {"at": 990, "outcome": "failed, will retry: x"},
                "last_complete_pull": null,
                "last_pull_error": {"at": 999, "outcome": "transport: refused"}}]
        });
        let text = render(&status, 1000);
        for want in [
            "http://a:1 (dmrelay 0.1.0), up 2m05s",
            "3 envelopes",
            "2 in memory",
            "peer      http://b:2",
            "open (3 failed pushes in a row)",
            "7 items",
            "10s ago (failed, will retry: x)",
            "last complete pull  none yet",
            "1s ago (transport: refused)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
