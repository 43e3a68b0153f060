-- The issue that weighed each article, picked or left out. Articles were chosen by publication
-- date alone, between the previous issue's slot and this one's, so a post dated before a slot
-- but fetched after its issue was made fell before the next window and went out in no issue.
-- An issue now takes what no issue has weighed yet (docs/ARCHITECTURE.md §5), and marks it.
ALTER TABLE article ADD COLUMN considered_in bigint REFERENCES issue;

-- The next issue reads only what is not weighed yet.
CREATE INDEX article_unconsidered_idx ON article (published_at) WHERE considered_in IS NULL;
