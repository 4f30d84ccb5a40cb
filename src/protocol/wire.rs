//! The peer plane's wire constants (SPEC §5.2, §7), shared by the routes that serve them and
//! the actors that call them, and the push body's log position (a dmrelay extension).

use serde::{Deserialize, Serialize};

/// Largest client request body, and largest single replicated envelope (SPEC §6.5).
pub const MAX_CLIENT_BODY_BYTES: usize = 64 * 1024;
/// Largest peer batch body (SPEC §6.5).
pub const MAX_PEER_BATCH_BYTES: usize = 1024 * 1024;
/// Most items in one replicate request (SPEC §7.1–7.2).
pub const MAX_ITEMS_PER_BATCH: usize = 50;
/// Default and largest `limit` of the change feed (SPEC §7.3).
pub const FEED_DEFAULT_LIMIT: u64 = 256;
pub const FEED_MAX_LIMIT: u64 = 1000;

pub const PATH_REPLICATE_ENVELOPE: &str = "/api/mesh/dm/replicate-envelope";
pub const PATH_REPLICATE_ACK: &str = "/api/mesh/dm/replicate-ack";
pub const PATH_CHANGES: &str = "/api/mesh/dm/changes";

/// The caller's own peer URL (SPEC §5.2).
pub const HEADER_PEER_URL: &str = "x-peer-url";
/// Unix seconds when the request was signed (SPEC §5.2).
pub const HEADER_PEER_TIMESTAMP: &str = "x-peer-timestamp";
/// Hex HMAC-SHA256 over the request (SPEC §5.2).
pub const HEADER_PEER_HMAC: &str = "x-peer-hmac";

/// Where a push batch sits in the sender's log (the optional `"feed"` member of a replicate
/// body, a dmrelay extension that other implementations ignore): the batch holds every change
/// the sender's clients made with a seq in `(after, through]` of its store `epoch`.
///
/// The receiver keeps, per peer, how far such batches reached without a gap, and its pull of
/// that peer's feed asks to skip them (`pushed_through`), so the pull does not fetch again what
/// the push delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub epoch: String,
    pub after: u64,
    pub through: u64,
}

/// The feed query parameter that names how far the caller got the peer's own clients'
/// changes by push (a dmrelay extension; see [`LogPosition`]).
pub const QUERY_PUSHED_THROUGH: &str = "pushed_through";

/// The feed query parameter that ends the page at this seq (a dmrelay extension): a puller
/// whose peer's pushes are flowing reads only up to where they reached, and leaves the rest to
/// them.
pub const QUERY_UNTIL: &str = "until";

/// The feed query parameter (`digest=1`, a dmrelay extension) that asks for each entry's seq
/// and signature instead of its item: `{"seq": 41, "sig": "<hex>"}`. A puller that holds every
/// entry of such a page (replicas a third node pushed to it too) fetches no bodies; one that
/// finds a new entry fetches the same range in full. Implementations without it ignore the
/// parameter and send items, which the puller takes as they are.
pub const QUERY_DIGEST: &str = "digest";

/// The `sig` member of an envelope's or ack object's JSON (or of a feed digest entry), read
/// without parsing the rest of it: `None` if `json` is not an object with a string `sig`.
pub fn signature_field(json: &str) -> Option<&str> {
    #[derive(Deserialize)]
    struct SigOnly<'a> {
        #[serde(borrow)]
        sig: Option<&'a str>,
    }
    serde_json::from_str::<SigOnly>(json).ok()?.sig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_read_out_of_an_item_without_the_rest() {
        assert_eq!(
            signature_field(r#"{"v":1,"ciphertext":"a\"b","sig":"00ff","x":[1,{"y":2}]}"#),
            Some("00ff")
        );
        assert_eq!(signature_field(r#"{"sig":5}"#), None);
        assert_eq!(signature_field(r#"{"ciphertext":"x"}"#), None);
        assert_eq!(signature_field("[1]"), None);
        assert_eq!(signature_field("{"), None);
        // An escaped string cannot be borrowed: refused, never misread.
        assert_eq!(signature_field(r#"{"sig":"0\u0030"}"#), None);
    }
}
