-- Finding a dead worker's claims without scanning every claim: workers are listed here when
-- they register, so a claim is orphaned when its worker is listed but no longer holds its lock,
-- and those claims are found through the index below. A row goes once its worker is gone and
-- holds nothing.
CREATE TABLE worker (
    worker_id  integer PRIMARY KEY,
    host       text,
    pid        integer,
    started_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX delivery_claimed_idx ON delivery (claimed_by) WHERE status = 'sending';

-- The workers alive now: those whose session holds their advisory lock (lock_class, id).
CREATE FUNCTION live_workers(lock_class integer) RETURNS TABLE (worker bigint)
LANGUAGE sql STABLE AS $$
    SELECT objid::bigint FROM pg_locks
    WHERE locktype = 'advisory' AND classid = lock_class::oid AND objsubid = 2 AND granted
$$;
