-- Claims have an owner (DESIGN.md §4.7). Each delivering process registers as a worker with a
-- number from this sequence and holds the session-level advisory lock (1684498790, number) on
-- a connection of its own for as long as it lives. A claim records its worker; every write
-- about the claim checks it, and a claim whose worker's lock is gone (kill -9, a lost
-- connection: Postgres drops the lock with the session) is claimable again at once, without
-- waiting out the lease.
CREATE SEQUENCE worker_id_seq AS integer CYCLE;

-- NULL for claims made before this migration: those wait out their lease as before.
ALTER TABLE delivery ADD COLUMN claimed_by integer;

-- How many of an issue's claims were taken back from a worker that died or ran out its lease.
ALTER TABLE issue ADD COLUMN reclaimed integer NOT NULL DEFAULT 0;
