-- pg_locks lists the advisory locks of every database on the server, so a worker of another
-- digestif database with the same id (staging beside production, a test) made a dead worker
-- here look alive, and its claims waited for their leases. Only this database's locks count.
CREATE OR REPLACE FUNCTION live_workers(lock_class integer) RETURNS TABLE (worker bigint)
LANGUAGE sql STABLE AS $$
    SELECT objid::bigint FROM pg_locks
    WHERE locktype = 'advisory' AND classid = lock_class::oid AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
$$;
