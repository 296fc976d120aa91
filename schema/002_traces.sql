-- bmap map schema, version 2: traces stored by `bmap replay --store`.
--
-- `accesses` and `accessed_objects` are the public views DESIGN.md names;
-- the tables behind them keep a little more (failure, object id).

-- One row per stored trace. Storing the same trace again (same content or
-- same name) replaces it.
CREATE TABLE traces (
    name      TEXT PRIMARY KEY,   -- the trace's file name
    sha256    TEXT NOT NULL,      -- of the trace's bytes
    format    TEXT NOT NULL,      -- nbdkit, qemu, blkparse, csv
    path      TEXT,
    stored_at TEXT NOT NULL,
    requests  INTEGER NOT NULL
);

-- Every request, in trace order (`seq` from 1).
CREATE TABLE trace_requests (
    trace  TEXT NOT NULL REFERENCES traces(name),
    seq    INTEGER NOT NULL,
    time   REAL,
    op     TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    failed TEXT,                  -- error text when the request failed
    PRIMARY KEY (trace, seq)
) WITHOUT ROWID;

-- Each request split over the layout: one row per object it touched.
CREATE TABLE trace_objects (
    trace   TEXT NOT NULL REFERENCES traces(name),
    seq     INTEGER NOT NULL,
    object  INTEGER REFERENCES objects(id),  -- NULL: beyond the end of the image
    bytes   INTEGER NOT NULL
);
CREATE INDEX trace_objects_seq ON trace_objects(trace, seq);
CREATE INDEX trace_objects_object ON trace_objects(object);

-- Public view: the requests of stored traces.
CREATE VIEW accesses AS
SELECT trace, seq, time, op, offset, length FROM trace_requests;

-- Public view: which objects each request touched, and how many bytes of
-- each (kind 'beyond-end' for bytes past the image).
CREATE VIEW accessed_objects AS
SELECT t.trace                      AS trace,
       t.seq                        AS seq,
       coalesce(o.kind, 'beyond-end') AS kind,
       coalesce(o.name, 'beyond the end of the image') AS object,
       o.partition                  AS partition,
       o.path                       AS path,
       t.bytes                      AS bytes
FROM trace_objects t
LEFT JOIN objects o ON o.id = t.object;
