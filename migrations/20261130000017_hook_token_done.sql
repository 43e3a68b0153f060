-- A webhook request claimed but not yet acted on (done = false) is in progress: the provider's
-- retry of it is asked to come back (503) rather than refused as a replay (401), since a
-- provider told 401 never sends the event again, and the first attempt may still fail. Rows
-- from before this column were acted on.
ALTER TABLE hook_token ADD COLUMN done boolean NOT NULL DEFAULT true;
