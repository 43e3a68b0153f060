-- Per-feed selection (issue 19): at most `max_per_issue` of a feed's articles in one issue (its
-- newest), and keywords an article's title or summary must (`include`, any one of them) or
-- must not (`exclude`) contain as whole words, case-insensitive. They are applied when an
-- issue is composed, not when a feed is fetched, so every entry is stored and a changed
-- filter applies from the next issue on.
ALTER TABLE feed
    ADD COLUMN max_per_issue integer CHECK (max_per_issue BETWEEN 1 AND 100),
    ADD COLUMN include text[] NOT NULL DEFAULT '{}',
    ADD COLUMN exclude text[] NOT NULL DEFAULT '{}';
