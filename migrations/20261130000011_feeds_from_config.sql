-- Feeds listed in the config file (`[[feeds.sources]]`) are kept in step with it: the file
-- wins for their name and tags, and a feed taken out of the file goes. Feeds added with
-- `digestif feeds add` are the operator's and stay until `feeds remove`.
ALTER TABLE feed ADD COLUMN from_config boolean NOT NULL DEFAULT false;
