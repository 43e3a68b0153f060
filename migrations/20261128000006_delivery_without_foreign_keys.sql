-- Fan-out writes one delivery per subscriber in a single INSERT … SELECT; with the two foreign
-- keys on delivery, Postgres checks both for every row, which took 15 of the 23 seconds of a
-- million-subscriber fan-out (BENCHMARKS.md). The references are kept by the code instead:
-- deliveries are only created by fan-out from existing rows, issues are never deleted, and
-- erasing a subscriber (`subscribers remove --purge`) deletes their deliveries first.
ALTER TABLE delivery DROP CONSTRAINT delivery_subscriber_id_fkey;
ALTER TABLE delivery DROP CONSTRAINT delivery_issue_id_fkey;
