-- Sustained load (issue 19): the busiest tables keep their dead rows few as they grow.
-- Per outbound message: a `messages` row inserted and rewritten once (its end); a `queue` row
-- inserted, its lease renewed, deleted; an attempt inserted and rewritten (its end); a
-- callback per change when the message has a URL; its conversation's row counted per batch.
-- With PostgreSQL's defaults a table is vacuumed once a fifth of it is dead, and the vacuum
-- sleeps between pages: under a steady stream the dead rows outgrow the live ones.
--
-- Free space in each page (fillfactor) lets a rewrite that changes no indexed column stay in
-- its page (a HOT update: no new index entries, cleaned up without a vacuum): the lease renewal
-- of a queue row, an attempt's end, a callback's retry. Vacuums start after a small share of a
-- table is dead (`scale_factor`) and do not sleep (`cost_delay = 0`); the queue and the
-- callbacks, small however many messages are stored, after a fixed number of dead rows. These
-- act only where autovacuum runs (`autovacuum = on`, the server's default). Setting them
-- rewrites nothing; only new pages get the fillfactor.
ALTER TABLE messages SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE queue SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE attempts SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE callbacks SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE conversations SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- `sending` is read from the attempts now, not stored (one rewrite fewer per message): rows an
-- earlier version marked `sending` are stored `queued` like the others (each has the attempt
-- that makes it read `sending`).
UPDATE messages SET status = 'queued' WHERE status = 'sending';
