-- Which issue weighed each article, picked or left out. Articles were chosen by publication
-- date alone, between the previous issue's slot and this one's, so a post dated before a slot
-- but fetched after its issue was made fell before the next window and went out in no issue.
-- An issue now takes what no issue has weighed yet (docs/ARCHITECTURE.md §5) and records it
-- here. A table of its own, not a column of `article`: recording takes only a KEY SHARE lock
-- on the article rows, which a feed fetch updating their text does not wait for, so the two
-- cannot deadlock.
CREATE TABLE article_considered (
    article_id bigint PRIMARY KEY REFERENCES article,
    issue_id   bigint NOT NULL REFERENCES issue
);

-- An article that went out in an issue never counts again, even if that issue recorded
-- nothing (made by a binary from before this migration, still running during an upgrade).
CREATE INDEX issue_item_article_idx ON issue_item (article_id) WHERE article_id IS NOT NULL;
