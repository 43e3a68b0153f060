-- What the issues made before migration 19 weighed: every article in an issue, and every other
-- article in an issue's window (dated after the slot before it, up to its own) that was stored
-- before that issue was made. One stored after its issue was made was never weighed: it stays
-- unrecorded, so the next issue takes it if it is recent enough (docs/ARCHITECTURE.md §5).
INSERT INTO article_considered (article_id, issue_id)
SELECT article_id, min(issue_id) FROM issue_item WHERE article_id IS NOT NULL GROUP BY article_id;

INSERT INTO article_considered (article_id, issue_id)
SELECT a.article_id, w.issue_id
FROM article a
CROSS JOIN LATERAL (
    SELECT i.issue_id, i.created_at FROM issue i
    WHERE i.slot >= a.published_at ORDER BY i.slot LIMIT 1
) w
WHERE w.created_at >= a.created_at
  AND NOT EXISTS (SELECT FROM article_considered c WHERE c.article_id = a.article_id);
