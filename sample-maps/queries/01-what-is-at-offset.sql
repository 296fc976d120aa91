-- What is at byte 0x1800123 of the image? (bmap-only: uses object_at)
-- The layout lookup is one b-tree descent on layout_segments' INTEGER
-- PRIMARY KEY; object_at() does the same lookup as a function.
SELECT start,
       "end",
       kind,
       object,
       path,
       0x1800123 - start AS offset_in_segment,
       object_at(0x1800123) AS object_at
FROM layout
WHERE start <= 0x1800123
ORDER BY start DESC
LIMIT 1;
