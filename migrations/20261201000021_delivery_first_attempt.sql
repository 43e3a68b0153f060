-- When a delivery was first attempted: `delivery.give_up_after` counts from here. It counted
-- from the fan-out (`created_at`), so the tail of a list sent under an hourly ceiling, or an
-- issue resumed days after it paused, failed for good on its first greylisting 4xx.
ALTER TABLE delivery ADD COLUMN first_attempt_at timestamptz;

-- Retries already under way keep the age they had; a first attempt in flight starts its own
-- when claimed again.
UPDATE delivery SET first_attempt_at = created_at
WHERE status = 'deferred' OR (status = 'sending' AND attempts > 1);
