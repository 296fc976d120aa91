-- Which block groups' inode tables did each stored trace read?
SELECT trace,
       partition,
       CAST(substr(object, instr(object, 'group ') + 6) AS INTEGER) AS grp,
       count(DISTINCT seq) AS requests,
       sum(bytes) AS bytes
FROM accessed_objects
WHERE kind = 'inode-table'
GROUP BY trace, partition, grp
ORDER BY trace, partition, grp;
