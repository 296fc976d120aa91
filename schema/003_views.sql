-- bmap map schema, version 3: views for everyday questions. Each is plain
-- SQL over the tables, so the stock sqlite3 shell reads them too.

-- One row per name of every file, directory and symlink.
CREATE VIEW files AS
SELECT n.path                         AS path,
       o.inode                        AS inode,
       o.partition                    AS partition,
       o.kind                         AS kind,
       o.size                         AS size,
       coalesce(sum(e.end - e.start), 0) AS allocated_bytes,
       count(e.start)                 AS extent_count,
       min(e.start)                   AS first_disk_offset,
       max(e.end)                     AS last_disk_offset
FROM names n
JOIN objects o ON o.id = n.object
LEFT JOIN extents e ON e.object = o.id
WHERE o.kind IN ('file', 'directory', 'symlink')
GROUP BY n.object, n.path;

-- Files by number of extents. `contiguity` is the share of the file's
-- allocated bytes in its largest extent: 1.0 for a contiguous file.
CREATE VIEW fragmentation AS
SELECT n.path                         AS path,
       o.partition                    AS partition,
       o.kind                         AS kind,
       o.size                         AS size,
       count(*)                       AS extents,
       sum(e.end - e.start)           AS allocated_bytes,
       round(1.0 * max(e.end - e.start) / sum(e.end - e.start), 4) AS contiguity
FROM names n
JOIN objects o ON o.id = n.object
JOIN extents e ON e.object = o.id
WHERE o.kind IN ('file', 'directory', 'symlink')
GROUP BY n.object, n.path;

-- Runs of free space per filesystem.
CREATE VIEW free_space AS
SELECT o.partition                    AS partition,
       o.device                       AS device,
       e.start                        AS start,
       e.end                          AS end,
       e.end - e.start                AS length
FROM objects o
JOIN extents e ON e.object = o.id
WHERE o.kind = 'free';

-- Bytes per kind of filesystem metadata, per filesystem (from the layout:
-- what each kind really owns).
CREATE VIEW metadata AS
SELECT o.partition                    AS partition,
       o.device                       AS device,
       o.kind                         AS kind,
       count(DISTINCT o.id)           AS objects,
       sum(s.end - s.start)           AS bytes
FROM layout_segments s
JOIN objects o ON o.id = s.object
WHERE o.kind IN ('boot-block', 'superblock', 'superblock-backup', 'group-descriptors',
                 'reserved-gdt', 'block-bitmap', 'inode-bitmap', 'inode-table',
                 'journal', 'mmp', 'special-inode', 'extent-block', 'indirect-block',
                 'xattr-block')
GROUP BY o.partition, o.device, o.kind;

-- After `bmap replay --store`: files in order of first access per trace,
-- with bytes read (re-reads included) and the share of the file read
-- (distinct bytes).
CREATE VIEW boot_files AS
SELECT t.name                         AS trace,
       min(p.seq)                     AS first_seq,
       min(r.time)                    AS first_time,
       o.path                         AS path,
       o.partition                    AS partition,
       o.size                         AS size,
       sum(p.bytes)                   AS bytes_read,
       round(100.0 * min(sum(p.new_bytes), o.size) / max(o.size, 1), 1) AS percent_read
FROM trace_objects p
JOIN trace_requests r ON r.trace = p.trace AND r.seq = p.seq
JOIN traces t ON t.id = p.trace
JOIN objects o ON o.id = p.object
WHERE r.op = 'read' AND r.failed IS NULL AND o.kind = 'file'
GROUP BY p.trace, p.object;
