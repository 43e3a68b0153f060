-- Whether a delivery failed because a relay refused it outright for the relay's own reasons (a
-- policy block, the kind of refusal the breaker counts), not the subscriber's. The attempts that
-- trip the breaker fail before the issue pauses; resuming the issue tries these again, so a
-- relay-wide block lifted by the operator loses nobody the issue.
ALTER TABLE delivery ADD COLUMN systemic boolean NOT NULL DEFAULT false;
