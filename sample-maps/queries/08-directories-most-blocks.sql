-- Which directories take the most blocks?
SELECT f.partition,
       f.path,
       f.size,
       f.allocated_bytes,
       f.allocated_bytes / fs.block_size AS blocks
FROM files f
JOIN filesystems fs ON fs.partition IS f.partition
WHERE f.kind = 'directory'
ORDER BY f.allocated_bytes DESC, f.partition, f.path
LIMIT 10;
