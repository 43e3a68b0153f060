-- What the issues made before migration 19 weighed: every article in an issue, and every other
-- article dated at or before the latest issue's slot (the window rule that chose them). Without
-- this, the first issue after an upgrade would send last issue's articles again.
UPDATE article a
SET considered_in = coalesce(
        (SELECT min(ii.issue_id) FROM issue_item ii WHERE ii.article_id = a.article_id),
        (SELECT i.issue_id FROM issue i WHERE i.slot >= a.published_at ORDER BY i.slot LIMIT 1))
WHERE a.considered_in IS NULL
  AND a.published_at <= (SELECT max(slot) FROM issue);
