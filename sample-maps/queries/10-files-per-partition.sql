-- How many files, directories and symlinks (names, so hard links count twice) does each partition hold?
SELECT f.partition,
       p.device,
       sum(f.kind = 'file') AS files,
       sum(f.kind = 'directory') AS directories,
       sum(f.kind = 'symlink') AS symlinks,
       sum(CASE WHEN f.kind = 'file' THEN f.size ELSE 0 END) AS file_bytes
FROM files f
LEFT JOIN partitions p ON p.number = f.partition
GROUP BY f.partition
ORDER BY f.partition;
