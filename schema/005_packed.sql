-- bmap map schema, version 5: a packed copy of the layout and of the
-- object columns replay prints, for programs that load the whole layout
-- (bmap replay, serve, plot, tui). Stepping SQLite through every row of
-- a map with millions of objects takes a good part of a second; one row
-- of blobs loads in milliseconds. Its format is documented in
-- src/replay/packed.rs; nothing else should need to read it.
--
-- It is derived data, written by `bmap index`. The triggers below delete
-- it when a table it copies changes, and readers then read the tables
-- themselves, so editing a map with SQL stays safe.
CREATE TABLE packed_map (
    format   INTEGER NOT NULL,  -- 2 (see src/replay/packed.rs)
    kinds    TEXT NOT NULL,     -- kind names the object rows index, comma-separated
    segments BLOB NOT NULL,     -- layout_segments
    objects  BLOB NOT NULL,     -- objects: kind, partition, size, name, device, path
    strings  BLOB NOT NULL      -- the text of names, devices and paths
);

CREATE TRIGGER packed_map_objects_insert AFTER INSERT ON objects
BEGIN DELETE FROM packed_map; END;
CREATE TRIGGER packed_map_objects_update AFTER UPDATE ON objects
BEGIN DELETE FROM packed_map; END;
CREATE TRIGGER packed_map_objects_delete AFTER DELETE ON objects
BEGIN DELETE FROM packed_map; END;
CREATE TRIGGER packed_map_layout_insert AFTER INSERT ON layout_segments
BEGIN DELETE FROM packed_map; END;
CREATE TRIGGER packed_map_layout_update AFTER UPDATE ON layout_segments
BEGIN DELETE FROM packed_map; END;
CREATE TRIGGER packed_map_layout_delete AFTER DELETE ON layout_segments
BEGIN DELETE FROM packed_map; END;
