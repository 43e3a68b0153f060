-- The content store: tips picked by rotation and articles picked by publication date.

CREATE TABLE tip (
    tip_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body         text NOT NULL CHECK (length(body) >= 1),
    tags         text[] NOT NULL DEFAULT '{}',
    source_url   text,
    -- Retired tips are kept (old issues refer to them) but never picked again.
    active       boolean NOT NULL DEFAULT true,
    times_sent   integer NOT NULL DEFAULT 0,
    last_sent_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Re-importing the same tips must not create copies.
CREATE UNIQUE INDEX tip_title_key ON tip (lower(title));
-- Rotation: never-sent first, then least recently sent.
CREATE INDEX tip_rotation_idx ON tip (active, last_sent_at NULLS FIRST, tip_id);

CREATE TABLE article (
    article_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    url          text NOT NULL UNIQUE,
    summary      text NOT NULL DEFAULT '',
    author       text,
    published_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX article_published_idx ON article (published_at);
