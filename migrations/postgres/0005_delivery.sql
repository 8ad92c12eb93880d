-- Delivery receipts, the message timeline, and the callback outbox.

-- What the providers' receipts say became of a message (NULL until the first); where its
-- changes are POSTed.
ALTER TABLE messages ADD COLUMN delivery_status TEXT;
ALTER TABLE messages ADD COLUMN status_callback TEXT;

-- Receipts name a message by the id its provider gave it.
CREATE INDEX messages_provider_message_id ON messages (provider_message_id, provider)
    WHERE provider_message_id IS NOT NULL AND direction = 'outbound';

-- Providers' receipts about a message, as recorded (Switchboard's own events are drawn from
-- the message and its attempts). `detail` is a JSON object's text.
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    message_id TEXT   NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    time       BIGINT NOT NULL,
    source     TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    provider   TEXT,
    detail     TEXT   NOT NULL
);

CREATE INDEX events_message ON events (message_id, id);

-- Callbacks to deliver: one row per change of a message's status or delivery status, the
-- state it changed to. Delivered oldest first per message (ids are drawn in the order the
-- changes of one message commit: each change is written after the one before committed); a
-- row leaves once delivered or given up on. An instance delivering one holds it until
-- `leased_until`; `leased_by` (its lease token) keeps an instance whose lease ran out from
-- handing back a row another instance took since.
-- No foreign key: a message purged by retention drops its callbacks when they come due.
CREATE TABLE callbacks (
    id              BIGSERIAL PRIMARY KEY,
    webhook_id      TEXT    NOT NULL DEFAULT 'msg_' || replace(gen_random_uuid()::TEXT, '-', ''),
    message_id      TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    delivery_status TEXT,
    created_at      BIGINT  NOT NULL,
    next_at         BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    leased_until    BIGINT,
    leased_by       TEXT
);

CREATE INDEX callbacks_message ON callbacks (message_id, id);
CREATE INDEX callbacks_next_at ON callbacks (next_at, id);
