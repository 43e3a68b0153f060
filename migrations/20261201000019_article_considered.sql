-- Which issue weighed each article, picked or left out. Articles were chosen by publication
-- date alone, between the previous issue's slot and this one's, so a post dated before a slot
-- but fetched after its issue was made fell before the next window and went out in no issue.
-- An issue now takes what no issue has weighed yet (docs/ARCHITECTURE.md §5) and records it
-- here. A table of its own, not a column of `article`: recording takes no lock on the article
-- rows a feed fetch may be updating at the same moment, so the two can never deadlock.
CREATE TABLE article_considered (
    article_id bigint PRIMARY KEY REFERENCES article,
    issue_id   bigint NOT NULL REFERENCES issue
);
