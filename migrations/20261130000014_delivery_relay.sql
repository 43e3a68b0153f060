-- Several relays (issue 20): which relay had the last word on a delivery, for `issue status`
-- per relay. NULL for the file transport and for deliveries written before relays existed.
ALTER TABLE delivery ADD COLUMN relay text CHECK (length(relay) <= 100);
