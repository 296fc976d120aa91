-- Which requests of a stored trace touched free space (blocks no file owns)?
SELECT a.trace,
       a.seq,
       r.op,
       r.offset,
       r.length,
       a.partition,
       a.bytes AS free_bytes
FROM accessed_objects a
JOIN accesses r ON r.trace = a.trace AND r.seq = a.seq
WHERE a.kind = 'free'
ORDER BY a.trace, a.seq, a.partition;
