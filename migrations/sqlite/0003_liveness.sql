-- One row, rewritten to prove the database takes writes: at start-up and by `/readyz` after a
-- write failed (disk full, read-only file system, I/O error).
CREATE TABLE liveness (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
