-- What did each stored trace read, by kind of object (file data, directories, partition table, ...)?
SELECT a.trace,
       a.kind,
       count(DISTINCT a.object) AS objects,
       sum(a.bytes) AS bytes
FROM accessed_objects a
JOIN accesses r ON r.trace = a.trace AND r.seq = a.seq
WHERE r.op = 'read'
GROUP BY a.trace, a.kind
ORDER BY a.trace, bytes DESC, a.kind;
