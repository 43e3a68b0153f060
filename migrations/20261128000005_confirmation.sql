-- Double opt-in: the outstanding confirmation request of a subscriber. A confirmation link
-- carries the nonce; it works once, and never after the subscriber unsubscribed unless it was
-- requested after that.
ALTER TABLE subscriber
    ADD COLUMN confirm_nonce bigint,
    ADD COLUMN confirm_sent_at timestamptz;

ALTER TABLE subscriber_event DROP CONSTRAINT subscriber_event_kind_check;
ALTER TABLE subscriber_event ADD CONSTRAINT subscriber_event_kind_check CHECK (kind IN (
    'subscribed', 'confirmed', 'unsubscribed', 'resubscribed', 'bounced', 'complained',
    'name_changed', 'confirmation_sent'));
