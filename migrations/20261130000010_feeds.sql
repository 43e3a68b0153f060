-- Feeds the article store fills itself from (issue 19): RSS, Atom and JSON Feed, fetched with
-- conditional GET and a backoff on errors.

CREATE TABLE feed (
    feed_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url            text NOT NULL UNIQUE,
    name           text CHECK (length(name) BETWEEN 1 AND 200),
    tags           text[] NOT NULL DEFAULT '{}',
    -- The validators of the last answer, sent back so an unchanged feed answers 304.
    etag           text CHECK (length(etag) <= 500),
    last_modified  text CHECK (length(last_modified) <= 100),
    last_fetch_at  timestamptz,
    -- 'ok', 'not modified', or the one-line error of the last fetch.
    last_status    text CHECK (length(last_status) <= 500),
    -- Failed fetches in a row: each doubles the wait before the next (up to a day).
    failures       integer NOT NULL DEFAULT 0,
    entries_taken  bigint NOT NULL DEFAULT 0,
    next_fetch_at  timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- An article from a feed remembers which entry it was: the same entry fetched again updates
-- its text, never adds a second article, and keeps its first publication time (so it never
-- moves into a later issue). Articles added by hand have neither.
ALTER TABLE article
    ADD COLUMN feed_id bigint REFERENCES feed ON DELETE SET NULL,
    ADD COLUMN guid text CHECK (length(guid) <= 1000);
CREATE UNIQUE INDEX article_feed_entry_key ON article (feed_id, guid) WHERE feed_id IS NOT NULL;
