-- Webhook requests already acted on (issue 20): a Mailgun token, an SNS MessageId, a Postmark
-- record ID, a generic signature. Kept in Postgres rather than in memory so a replay is refused
-- after a restart and by every `serve` process sharing the database. A row may go once its
-- request would be refused as stale anyway.
CREATE TABLE hook_token (
    provider   text NOT NULL,
    token      text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, token)
);

CREATE INDEX hook_token_expires_at ON hook_token (expires_at);
