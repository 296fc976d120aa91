-- Which files did a stored trace open but read less than half of?
SELECT trace,
       partition,
       path,
       size,
       bytes_read,
       percent_read
FROM boot_files
WHERE percent_read < 50
ORDER BY trace, percent_read, partition, path;
