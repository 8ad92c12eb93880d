-- One row, rewritten to prove the database takes writes: at start-up (a read-only server or a
-- standby is refused before anything is accepted).
CREATE TABLE liveness (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT  NOT NULL
);
