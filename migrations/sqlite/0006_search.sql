-- Message search (`GET /v1/messages`, `switchboard messages list`) and retries (issue 17).

-- How many attempts a message had made when it was last retried (0: never retried). A retry
-- gives it a fresh budget of its route's `max_attempts`; its attempts go on being numbered
-- after these, which stay in its record.
ALTER TABLE messages ADD COLUMN retried_after INTEGER NOT NULL DEFAULT 0;

-- Search pages are newest first by (created_at, id): one index per filter, each ending in that
-- order, so a page is a range of one index whatever the number of messages. The recipient's is
-- on the expression searches compare `to` with (`store::search::RECIPIENT_KEY_SQL`).
CREATE INDEX messages_created ON messages (created_at, id);
CREATE INDEX messages_owner_created ON messages (owner, created_at, id) WHERE owner IS NOT NULL;
CREATE INDEX messages_status_created ON messages (status, created_at, id);
CREATE INDEX messages_delivery_status_created ON messages (delivery_status, created_at, id)
    WHERE delivery_status IS NOT NULL;
CREATE INDEX messages_channel_created ON messages (channel, created_at, id);
CREATE INDEX messages_provider_created ON messages (provider, created_at, id) WHERE provider IS NOT NULL;
CREATE INDEX messages_recipient_created ON messages
    ((CASE WHEN channel = 'email' THEN lower(recipient) ELSE recipient END), created_at, id);
