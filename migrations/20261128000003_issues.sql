-- Issues of the digest and the content each one carries, snapshotted at compose time.

CREATE TABLE issue (
    issue_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 1, 2, 3 … for issues that go out; NULL for a slot skipped by the `when_empty` policy.
    number        integer UNIQUE CHECK (number > 0),
    -- The scheduled instant the issue belongs to: one issue per slot, whoever creates it.
    slot          timestamptz NOT NULL UNIQUE,
    subject       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('sending', 'sent', 'paused', 'skipped')),
    -- Why it is paused or skipped, for `issue list` and the log.
    status_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    CHECK ((status = 'skipped') = (number IS NULL))
);

-- A copy of each tip and article as it was when the issue was composed, so the email, a
-- resend and the web view always show the same content even if the source is edited later.
CREATE TABLE issue_item (
    issue_id   bigint NOT NULL REFERENCES issue ON DELETE CASCADE,
    position   integer NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('tip', 'article')),
    tip_id     bigint REFERENCES tip,
    article_id bigint REFERENCES article,
    title      text NOT NULL,
    -- Markdown body for tips; the summary for articles.
    body       text NOT NULL DEFAULT '',
    url        text,
    author     text,
    tags       text[] NOT NULL DEFAULT '{}',
    published_at timestamptz,
    PRIMARY KEY (issue_id, position),
    CHECK ((kind = 'tip') = (tip_id IS NOT NULL) AND (kind = 'article') = (article_id IS NOT NULL))
);

-- Secrets digestif makes for itself. `token` signs unsubscribe and confirmation links when
-- http.token_secret is not configured, so links work out of the box and every worker sharing
-- the database agrees on them. 244 random bits from two v4 UUIDs (no extension needed).
CREATE TABLE app_secret (
    name       text PRIMARY KEY,
    value      bytea NOT NULL CHECK (length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO app_secret (name, value)
VALUES ('token', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
