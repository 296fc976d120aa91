-- Which files are the most fragmented (most extents, least contiguous)?
SELECT partition,
       path,
       kind,
       size,
       extents,
       allocated_bytes,
       contiguity
FROM fragmentation
ORDER BY extents DESC, contiguity, partition, path
LIMIT 5;
