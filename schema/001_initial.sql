-- bmap map schema, version 1.
--
-- Tables hold what the indexer found; the views at the end are the public
-- surface (DESIGN.md): users, scripts and the TUI read `file_extents` and
-- `layout`, whose names and columns do not change.
--
-- Byte ranges are half-open [start, end) and absolute in the image.

-- Key/value facts about the map: bmap version, index time and options,
-- the image fingerprint (path, size, mtime, sha256 of partition tables
-- and superblocks).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Everything that lives in the image, as a containment tree:
-- disk -> partition -> filesystem -> metadata / directories / files.
CREATE TABLE objects (
    id        INTEGER PRIMARY KEY,
    parent    INTEGER REFERENCES objects(id),
    kind      TEXT NOT NULL,     -- disk, partition, file, inode-table, ... (README)
    name      TEXT NOT NULL,     -- display name: '/dev/sda1 /etc/fstab'
    partition INTEGER,           -- 1-based partition number; NULL on a bare disk
    device    TEXT,              -- the guest's device name: '/dev/sda1'
    inode     INTEGER,
    path      TEXT,              -- first path found for inode objects
    size      INTEGER,           -- logical size in bytes (i_size for inodes)
    flags     INTEGER NOT NULL DEFAULT 0,  -- 1 inline data, 2 fast symlink, 4 htree, 8 unlinked
    detail    TEXT
);
CREATE INDEX objects_parent ON objects(parent);
CREATE INDEX objects_path ON objects(path) WHERE path IS NOT NULL;

-- Names of inode objects beyond the first (objects.path): hard links.
CREATE TABLE links (
    object INTEGER NOT NULL REFERENCES objects(id),
    path   TEXT NOT NULL
);
CREATE INDEX links_path ON links(path);
CREATE INDEX links_object ON links(object);

-- Every name of every inode object.
CREATE VIEW names AS
SELECT id AS object, path FROM objects WHERE path IS NOT NULL
UNION ALL
SELECT object, path FROM links;

-- Byte ranges owned by objects. `logical` is the offset of `start` inside
-- the object (the file offset for inode data). Objects may overlap each
-- other here (a file lies inside its partition); `layout` resolves that.
CREATE TABLE extents (
    object  INTEGER NOT NULL REFERENCES objects(id),
    start   INTEGER NOT NULL,
    end     INTEGER NOT NULL,
    logical INTEGER NOT NULL,
    flags   INTEGER NOT NULL DEFAULT 0,  -- 1 unwritten
    PRIMARY KEY (object, logical, start),
    CHECK (start < end)
) WITHOUT ROWID;

-- The disjoint tiling of [0, image size): each segment belongs to the most
-- specific object covering it. `start` is the rowid, so a point lookup is
-- one b-tree descent.
CREATE TABLE layout_segments (
    start  INTEGER PRIMARY KEY,
    end    INTEGER NOT NULL,
    object INTEGER NOT NULL REFERENCES objects(id),
    CHECK (start < end)
);

-- Partitions as the table describes them.
CREATE TABLE partitions (
    object  INTEGER NOT NULL REFERENCES objects(id),
    number  INTEGER NOT NULL,
    device  TEXT NOT NULL,
    scheme  TEXT NOT NULL,    -- mbr or gpt
    role    TEXT NOT NULL,    -- primary, extended, logical
    start   INTEGER NOT NULL,
    end     INTEGER NOT NULL,
    type_id TEXT NOT NULL,    -- '0x83' or a GPT type GUID
    label   TEXT,
    uuid    TEXT
);

-- Filesystems and their counters.
CREATE TABLE filesystems (
    object           INTEGER NOT NULL REFERENCES objects(id),
    partition        INTEGER,
    device           TEXT NOT NULL,
    type             TEXT NOT NULL,
    start            INTEGER NOT NULL,
    block_size       INTEGER NOT NULL,
    blocks_count     INTEGER NOT NULL,
    free_blocks_sb   INTEGER NOT NULL,  -- as the superblock says
    free_bytes       INTEGER NOT NULL,  -- as the bitmaps say
    unknown_bytes    INTEGER NOT NULL,  -- allocated, claimed by nothing
    inodes_count     INTEGER NOT NULL,
    free_inodes_sb   INTEGER NOT NULL,
    groups           INTEGER NOT NULL,
    uuid             TEXT NOT NULL,
    label            TEXT NOT NULL,
    features         TEXT NOT NULL,
    state            TEXT NOT NULL,
    files            INTEGER NOT NULL,
    directories      INTEGER NOT NULL,
    symlinks         INTEGER NOT NULL,
    unlinked_inodes  INTEGER NOT NULL,
    external_journal TEXT
);

-- Damage that did not stop indexing, with the byte offset it concerns.
CREATE TABLE warnings (
    seq     INTEGER PRIMARY KEY,
    offset  INTEGER,
    message TEXT NOT NULL
);

-- Public view: one row per extent of every name of every file, directory
-- and symlink. Tree blocks (extent-block, indirect-block) and xattr blocks
-- are objects of their own kinds and are not here.
CREATE VIEW file_extents AS
SELECT n.path           AS path,
       o.kind           AS kind,
       o.inode          AS inode,
       o.partition      AS partition,
       e.logical        AS logical_offset,
       e.start          AS disk_offset,
       e.end - e.start  AS length
FROM names n
JOIN objects o ON o.id = n.object
JOIN extents e ON e.object = o.id
WHERE o.kind IN ('file', 'directory', 'symlink');

-- Public view: the disjoint tiling of the image.
CREATE VIEW layout AS
SELECT s.start AS start,
       s.end   AS end,
       o.kind  AS kind,
       o.name  AS object,
       o.path  AS path
FROM layout_segments s
JOIN objects o ON o.id = s.object;
