-- Which are the largest files (logical size), and how much disk do they take?
SELECT partition,
       path,
       size,
       allocated_bytes,
       extent_count
FROM files
WHERE kind = 'file'
ORDER BY size DESC, partition, path
LIMIT 10;
