-- Messages, their attempts, the dispatch queue and idempotency keys.
-- Times are Unix milliseconds; lists (attachments, tags) are JSON arrays.

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    channel             TEXT NOT NULL,
    sender              TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    subject             TEXT,
    body                TEXT NOT NULL,
    attachments         TEXT NOT NULL,
    tags                TEXT NOT NULL,
    status              TEXT NOT NULL,
    provider            TEXT,
    provider_message_id TEXT,
    error_code          TEXT,
    error_message       TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    finished_at         INTEGER
);

-- Retention purges finished messages oldest first.
CREATE INDEX messages_finished_at ON messages (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    message_id    TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    provider      TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    error_class   TEXT,
    error_code    TEXT,
    error_message TEXT,
    latency_ms    INTEGER,
    PRIMARY KEY (message_id, number)
);

-- One row per message not yet sent or failed: when it may next be tried, and how far it got.
CREATE TABLE queue (
    message_id TEXT    PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    not_before INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    round      INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX queue_not_before ON queue (not_before);

CREATE TABLE idempotency_keys (
    key          TEXT    PRIMARY KEY,
    request_hash TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
