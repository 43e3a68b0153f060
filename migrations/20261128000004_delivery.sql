-- The per-recipient delivery queue (DESIGN.md §4), the breaker's cool-down, and the shared
-- rate limiter.

CREATE TABLE delivery (
    issue_id        bigint NOT NULL REFERENCES issue ON DELETE CASCADE,
    -- Erasing a subscriber erases their deliveries too.
    subscriber_id   bigint NOT NULL REFERENCES subscriber ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'sending', 'sent', 'deferred', 'bounced', 'failed', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A claimed row belongs to one worker until then; after a crash it is claimed again.
    lease_until     timestamptz,
    last_code       smallint,
    -- The server's reply or our own reason, truncated; never a message body.
    last_error      text CHECK (length(last_error) <= 500),
    message_id      text,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issue_id, subscriber_id)
);
-- What workers claim: ready rows, and rows whose lease has run out.
CREATE INDEX delivery_ready_idx ON delivery (next_attempt_at)
    WHERE status IN ('pending', 'deferred');
CREATE INDEX delivery_leased_idx ON delivery (lease_until) WHERE status = 'sending';
CREATE INDEX delivery_subscriber_idx ON delivery (subscriber_id);

-- A paused issue resumes on its own after this time (or with `digestif issue resume`).
ALTER TABLE issue ADD COLUMN paused_until timestamptz;

-- Shared send-rate limiter (GCRA): each row holds the theoretical arrival time of the next
-- message under one ceiling. Workers reserve permits with one UPDATE, so the ceiling holds
-- across every process sharing the database.
CREATE TABLE rate_limit (
    name text PRIMARY KEY,
    tat  timestamptz NOT NULL DEFAULT now()
);
