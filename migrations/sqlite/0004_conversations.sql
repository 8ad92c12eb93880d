-- Two-way messaging: conversations, inbound messages (rows of `messages` with direction
-- 'inbound' and status 'received', never queued), their de-duplication, and opt-outs.
-- Messages stored before this migration keep `conversation_id` NULL (they belong to none).

-- A pair of participants on one channel family (`sms` covers SMS and MMS). Participants are
-- normalised, `participant_a <= participant_b`. Ids are assigned in order of creation: 1, 2, …
-- A plain rowid (one more than the largest), not AUTOINCREMENT: an upsert that finds its
-- conversation would use up an AUTOINCREMENT id and leave a gap. Conversations are never
-- deleted, so no id is ever given twice.
CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    channel         TEXT    NOT NULL,
    participant_a   TEXT    NOT NULL,
    participant_b   TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    -- The newest message's creation time and id (UUIDv7: ids sort by creation). Listing is
    -- by `last_message_id`, newest first.
    last_message_at INTEGER NOT NULL,
    last_message_id TEXT    NOT NULL,
    -- Messages of it still stored: retention's purge takes them off.
    message_count   INTEGER NOT NULL,
    UNIQUE (channel, participant_a, participant_b)
);

CREATE INDEX conversations_activity ON conversations (last_message_id);

ALTER TABLE messages ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
-- No foreign key: the id is looked up in the same statement that writes it, and a per-row
-- check would cost every send.
ALTER TABLE messages ADD COLUMN conversation_id INTEGER;
-- Inbound: when the provider says the message was sent (NULL: `created_at` stands for it).
ALTER TABLE messages ADD COLUMN occurred_at INTEGER;

-- A conversation's messages, oldest first (by id), and the conversations a key has messages in.
CREATE INDEX messages_conversation ON messages (conversation_id, id) WHERE conversation_id IS NOT NULL;
CREATE INDEX messages_owner_conversation ON messages (owner, conversation_id)
    WHERE owner IS NOT NULL AND conversation_id IS NOT NULL;

-- One row per inbound message: a redelivery of (family, provider message id) is the same message.
-- WITHOUT ROWID: the key is the table (one B-tree to write per inbound message, not two). No
-- foreign key and no index on `message_id`: retention's purge deletes a message's row here by
-- its key in the same transaction, and the hot path is spared a parent lookup and an index.
CREATE TABLE inbound_ids (
    channel             TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    PRIMARY KEY (channel, provider_message_id)
) WITHOUT ROWID;

-- `recipient` asked (STOP) not to get messages from `sender` on channel family `channel`.
CREATE TABLE opt_outs (
    channel    TEXT    NOT NULL,
    sender     TEXT    NOT NULL,
    recipient  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (channel, sender, recipient)
);
