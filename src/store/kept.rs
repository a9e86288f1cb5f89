//! The replay rule both engines follow, as
//! README "Missed messages: history and `Last-Event-ID`" describes it:
//! what is served of a kept stream (a user's, or the
//! broadcasts) is its newest `history.size` entries younger than
//! `history.ttl_secs`; a replay after an id is a gap when the id is
//! malformed or kept in neither stream, or when an entry after it fell out
//! of a served window; it gives what follows the id (everything served, on
//! a gap), the user's messages and the broadcasts merged in id order. The
//! embedded engine applies [`window`] to its streams; the Redis engine
//! applies the same rule inside `redis/lua/replay.lua`, and both finish
//! with [`finish`].

use super::{Kept, MsgId, Replay};

/// The id a missing or malformed `Last-Event-ID` counts as: before every
/// message, and always a gap.
const NONE: MsgId = MsgId { ms: 0, seq: 0 };

/// The served window of one stream, from its entries newest first: the
/// first `size` younger than `oldest_ms` (unix ms). True in the second
/// place when an entry after `last` fell out of it (by count or by age).
pub(crate) fn window<'a>(
    newest_first: impl Iterator<Item = &'a Kept>,
    size: usize,
    oldest_ms: u64,
    last: Option<MsgId>,
) -> (Vec<Kept>, bool) {
    let last = last.unwrap_or(NONE);
    let mut served = Vec::new();
    for (i, k) in newest_first.enumerate() {
        if i >= size || k.id.ms < oldest_ms {
            return (served, k.id > last);
        }
        served.push(k.clone());
    }
    (served, false)
}

/// The replay after `last`: `gap` as the engine found it (`last` in none
/// of the streams read, or an entry after it out of a window), the served
/// entries of each stream read (the user's, the broadcasts, each followed
/// topic's), in any order.
pub(crate) fn finish(
    last: Option<MsgId>,
    gap: bool,
    parts: impl IntoIterator<Item = Vec<Kept>>,
) -> Replay {
    let gap = gap || last.is_none();
    let last = last.unwrap_or(NONE);
    let mut entries: Vec<Kept> = parts
        .into_iter()
        .flatten()
        .filter(|k| gap || k.id > last)
        .collect();
    entries.sort_by_key(|k| k.id);
    entries.dedup_by_key(|k| k.id);
    Replay {
        gap,
        entries,
        start: None,
    }
}
