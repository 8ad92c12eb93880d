-- Delivery receipts, the message timeline, and the callback outbox.

-- What the providers' receipts say became of a message (NULL until the first); where its
-- changes are POSTed.
ALTER TABLE messages ADD COLUMN delivery_status TEXT;
ALTER TABLE messages ADD COLUMN status_callback TEXT;

-- Receipts name a message by the id its provider gave it.
CREATE INDEX messages_provider_message_id ON messages (provider_message_id, provider)
    WHERE provider_message_id IS NOT NULL AND direction = 'outbound';

-- Providers' receipts about a message, as recorded (Switchboard's own events are drawn from
-- the message and its attempts). `detail` is a JSON object.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    message_id TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    time       INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    provider   TEXT,
    detail     TEXT    NOT NULL
);

CREATE INDEX events_message ON events (message_id, id);

-- Callbacks to deliver: one row per change of a message's status or delivery status, the
-- state it changed to. Delivered oldest first per message; a row leaves once delivered or
-- given up on. AUTOINCREMENT: ids are never reused (order within a message).
-- No foreign key: a message purged by retention drops its callbacks when they come due.
CREATE TABLE callbacks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    delivery_status TEXT,
    created_at      INTEGER NOT NULL,
    next_at         INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    leased_until    INTEGER
);

CREATE INDEX callbacks_message ON callbacks (message_id, id);
CREATE INDEX callbacks_next_at ON callbacks (next_at, id);
