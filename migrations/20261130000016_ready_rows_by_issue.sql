-- Claims read the ready rows of each sending issue through an index led by the issue
-- (BENCHMARKS.md, issue 16). Indexed by time alone, a claim walked every ready row in the table
-- in time order, those of a paused issue included, until it reached a sending issue's: with last
-- week's issue paused on a million ready rows, each claim for this week's took 272 ms instead of
-- 4.8 ms. The build and the drop lock `delivery` until the migration commits (0.65 s for a
-- million deliveries here): stop every worker, migrate, then start the new version, whose claim
-- is the one this index serves.
CREATE INDEX delivery_ready_by_issue_idx ON delivery (issue_id, next_attempt_at)
    WHERE status IN ('pending', 'deferred');
DROP INDEX delivery_ready_idx;
ALTER INDEX delivery_ready_by_issue_idx RENAME TO delivery_ready_idx;
