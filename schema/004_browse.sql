-- bmap map schema, version 4: views with object ids, for programs that
-- browse the map (bmap tui) rather than report from it. Plain SQL over
-- the tables, like every view.

-- Every object with its place in the containment tree (disk → partition →
-- filesystem → directories → files; metadata under its filesystem).
-- `children` counts the objects whose parent this is.
CREATE VIEW object_tree AS
SELECT o.id        AS id,
       o.parent    AS parent,
       o.kind      AS kind,
       o.name      AS name,
       o.device    AS device,
       o.partition AS partition,
       o.inode     AS inode,
       o.path      AS path,
       o.size      AS size,
       (SELECT count(*) FROM objects c WHERE c.parent = o.id) AS children
FROM objects o;

-- `layout` with the owning object's id instead of its name.
CREATE VIEW layout_objects AS
SELECT s.start  AS start,
       s.end    AS end,
       s.object AS object_id,
       o.kind   AS kind
FROM layout_segments s
JOIN objects o ON o.id = s.object;

-- Every extent of every object, by object id (file_extents names only
-- files, directories and symlinks, and by path).
CREATE VIEW object_extents AS
SELECT e.object        AS object_id,
       e.logical       AS logical_offset,
       e.start         AS disk_offset,
       e.end - e.start AS length,
       e.flags         AS flags
FROM extents e;

-- After `bmap replay --store`: the pieces of each request by object id
-- (NULL: beyond the end of the image).
CREATE VIEW trace_pieces AS
SELECT t.name   AS trace,
       p.seq    AS seq,
       p.object AS object_id,
       p.bytes  AS bytes
FROM trace_objects p
JOIN traces t ON t.id = p.trace;
