-- Messages, their attempts, the dispatch queue (with leases) and idempotency keys.
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
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    finished_at         BIGINT
);

CREATE INDEX messages_finished_at ON messages (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE attempts (
    message_id    TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    provider      TEXT    NOT NULL,
    started_at    BIGINT  NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT,
    error_class   TEXT,
    error_code    TEXT,
    error_message TEXT,
    latency_ms    BIGINT,
    PRIMARY KEY (message_id, number)
);

-- One row per message not yet sent or failed. A worker holds a message while `lease_until` is
-- in the future; its writes name `lease_token`, so a worker whose lease was taken over cannot
-- overwrite the new holder's result.
CREATE TABLE queue (
    message_id  TEXT    PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    not_before  BIGINT  NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    round       INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_until BIGINT
);

CREATE INDEX queue_due ON queue (not_before);

CREATE TABLE idempotency_keys (
    key          TEXT   PRIMARY KEY,
    request_hash TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    channel      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
