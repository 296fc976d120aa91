-- bmap map schema, version 2: traces stored by `bmap replay --store`.
--
-- `accesses` and `accessed_objects` are the public views DESIGN.md names;
-- the tables behind them keep a little more (failure, object id) and refer
-- to their trace by number to stay small.

-- One row per stored trace. Storing the same trace again (same content or
-- same name) replaces it.
CREATE TABLE traces (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE, -- the trace's file name, or --name
    sha256    TEXT NOT NULL,        -- of the trace's bytes
    format    TEXT NOT NULL,        -- nbdkit, qemu, blkparse, csv
    path      TEXT,
    stored_at TEXT NOT NULL,
    requests  INTEGER NOT NULL
);

-- Every request, in trace order (`seq` from 1).
CREATE TABLE trace_requests (
    trace  INTEGER NOT NULL REFERENCES traces(id),
    seq    INTEGER NOT NULL,
    time   REAL,
    op     TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    failed TEXT,                    -- error text when the request failed
    PRIMARY KEY (trace, seq)
) WITHOUT ROWID;

-- Each request split over the layout: one row per object it touched.
CREATE TABLE trace_objects (
    trace   INTEGER NOT NULL REFERENCES traces(id),
    seq     INTEGER NOT NULL,
    object  INTEGER REFERENCES objects(id),  -- NULL: beyond the end of the image
    bytes   INTEGER NOT NULL,
    -- Of a read: the bytes this trace had not read from the object before.
    new_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX trace_objects_seq ON trace_objects(trace, seq);
CREATE INDEX trace_objects_object ON trace_objects(object);

-- Public view: the requests of stored traces.
CREATE VIEW accesses AS
SELECT t.name AS trace, r.seq, r.time, r.op, r.offset, r.length
FROM trace_requests r
JOIN traces t ON t.id = r.trace;

-- Public view: which objects each request touched, and how many bytes of
-- each (kind 'beyond-end' for bytes past the image).
CREATE VIEW accessed_objects AS
SELECT t.name                                          AS trace,
       p.seq                                           AS seq,
       coalesce(o.kind, 'beyond-end')                  AS kind,
       coalesce(o.name, 'beyond the end of the image') AS object,
       o.partition                                     AS partition,
       o.path                                          AS path,
       p.bytes                                         AS bytes
FROM trace_objects p
JOIN traces t ON t.id = p.trace
LEFT JOIN objects o ON o.id = p.object;
