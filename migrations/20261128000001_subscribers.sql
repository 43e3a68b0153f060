-- Subscribers, their consent and lifecycle evidence, and the anonymous suppression list.
-- Migrations are never edited once applied: add a new file instead.

CREATE TABLE subscriber (
    subscriber_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- As given, with the domain lower-cased; uniqueness is on lower(email) below.
    email           text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name            text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 100),
    status          text NOT NULL
                    CHECK (status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')),
    -- How consent was given (cli, import, web) and when: the operator's evidence (GDPR Art. 7).
    consent_source  text NOT NULL,
    consent_at      timestamptz NOT NULL DEFAULT now(),
    confirmed_at    timestamptz,
    unsubscribed_at timestamptz,
    hard_bounces    integer NOT NULL DEFAULT 0,
    soft_bounces    integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- `Bob@Example.com` and `bob@example.com` are one subscriber.
CREATE UNIQUE INDEX subscriber_email_key ON subscriber (lower(email));
-- Fan-out selects active subscribers in id order.
CREATE INDEX subscriber_status_idx ON subscriber (status, subscriber_id);

-- Append-only: never updated, deleted only with the subscriber on an erasure request.
CREATE TABLE subscriber_event (
    subscriber_event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id       bigint NOT NULL REFERENCES subscriber ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN (
                            'subscribed', 'confirmed', 'unsubscribed', 'resubscribed',
                            'bounced', 'complained', 'name_changed')),
    -- cli, import, web, one-click, page, admin, complaint, smtp, dsn …
    method              text NOT NULL,
    -- Free-form evidence: the import file, an SMTP reply, a client address.
    detail              text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriber_event_subscriber_idx ON subscriber_event (subscriber_id, created_at);

-- What remains of an erased subscriber: the SHA-256 of the lower-cased address and nothing
-- else, so an accidental re-import can be refused without keeping the address itself.
CREATE TABLE suppression (
    email_sha256 bytea PRIMARY KEY CHECK (length(email_sha256) = 32),
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
