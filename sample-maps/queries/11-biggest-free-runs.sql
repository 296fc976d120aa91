-- Where are the biggest runs of free space? (bmap-only: uses hsize)
SELECT device,
       start,
       "end",
       length,
       hsize(length) AS human
FROM free_space
ORDER BY length DESC, start
LIMIT 5;
