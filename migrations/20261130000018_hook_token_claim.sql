-- Which attempt holds a webhook request's claim: an attempt that outran its hold and then
-- failed gives back only its own claim, never a later attempt's (nor a recorded request's).
-- Rows from before this column were claimed by attempts long finished.
ALTER TABLE hook_token ADD COLUMN claim bigint NOT NULL DEFAULT 0;
