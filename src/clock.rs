//! The one clock that scheduling reads: which slot is due, which is next, what "send now" means.
//!
//! Release builds read the system clock and nothing else. Debug builds (the ones the test suite
//! runs) also honour `DIGESTIF_NOW`: an RFC 3339 time at which the clock starts when the
//! process does, then runs on at the real pace; `TIME@UNIX-SECONDS` says the clock read TIME at
//! that real instant, so every process started under one value agrees (CI runs the suite so,
//! on a Monday morning inside the default slot's grace window).

use std::sync::OnceLock;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// The variable debug builds read.
pub const NOW_VAR: &str = "DIGESTIF_NOW";

/// Where the clock was set and when (in real time) that happened.
static START: OnceLock<Option<(DateTime<Utc>, Instant)>> = OnceLock::new();

/// Reads `DIGESTIF_NOW` once, so a bad value fails the command up front with its name; an
/// unset variable (and any release build) means the system clock.
pub fn init() -> anyhow::Result<()> {
    let set = from_env()?;
    let _ = START.set(set);
    Ok(())
}

#[cfg(debug_assertions)]
fn from_env() -> anyhow::Result<Option<(DateTime<Utc>, Instant)>> {
    let v = match std::env::var(NOW_VAR) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return Ok(None),
    };
    let bad =
        || anyhow::anyhow!("{NOW_VAR}: '{v}' is not an RFC 3339 time (optionally @unix-seconds)");
    let (at, anchor) = match v.trim().split_once('@') {
        Some((at, secs)) => (at, Some(secs.parse::<i64>().map_err(|_| bad())?)),
        None => (v.trim(), None),
    };
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| bad())?
        .to_utc();
    // With an anchor every process started under the same value reads the same time.
    let at = match anchor.and_then(|s| DateTime::from_timestamp(s, 0)) {
        Some(set) => at + (Utc::now() - set),
        None => at,
    };
    Ok(Some((at, Instant::now())))
}

#[cfg(not(debug_assertions))]
fn from_env() -> anyhow::Result<Option<(DateTime<Utc>, Instant)>> {
    Ok(None)
}

/// Now, as scheduling sees it.
pub fn now() -> DateTime<Utc> {
    let start = START.get_or_init(|| from_env().ok().flatten());
    match start {
        Some((at, since)) => *at + chrono::Duration::from_std(since.elapsed()).unwrap_or_default(),
        None => Utc::now(),
    }
}
