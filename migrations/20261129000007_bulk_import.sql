-- A million-row `subscribers import` took 46 s; issue 8 asks for 100,000 rows/s. Where the time
-- went (BENCHMARKS.md), and what this migration changes:
--
-- 1. The unique index on lower(email) compared keys with the database's collation (strcoll),
--    about 2 s of a million inserts. Its keys are only ever compared for equality, where every
--    deterministic collation agrees with byte order, so it now uses "C". The lower-casing is
--    unchanged (it still follows the column's collation). Queries name the index's expression,
--    `lower(email) COLLATE "C"`, or Postgres would not use it.
CREATE UNIQUE INDEX subscriber_email_c_key ON subscriber ((lower(email) COLLATE "C"));
DROP INDEX subscriber_email_key;
ALTER INDEX subscriber_email_c_key RENAME TO subscriber_email_key;

-- 2. (status, subscriber_id) over every row cost about 1.5 s per million imported, yet fan-out
--    reads nearly the whole table (the active subscribers) and scans it faster without the
--    index. Only the rare statuses are worth an index, for `subscribers list --status`.
DROP INDEX subscriber_status_idx;
CREATE INDEX subscriber_status_idx ON subscriber (status, subscriber_id) WHERE status <> 'active';

-- 3. One `subscribed` event per imported row (plus its foreign-key check) was 15 s of the 46.
--    An import is now recorded once, with its source, and each subscriber it added points at
--    that record; `subscribers show` lists it as the `subscribed` event it used to be. Earlier
--    imports keep their per-row events. No foreign key, for the same reason as delivery's
--    (migration 6): import records are never deleted, and only the import sets the column.
CREATE TABLE subscriber_import (
    import_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The file as the operator named it.
    source     text NOT NULL,
    added      bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE subscriber ADD COLUMN import_id bigint;
