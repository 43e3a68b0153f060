//! Articles from feeds (issue 19), the parts built so far: reading a feed's entries as
//! articles ([`entry`]). Fetching, the feed table and the `feeds` commands come next.

pub mod entry;
pub mod fetch;
