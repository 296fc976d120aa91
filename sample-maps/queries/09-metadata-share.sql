-- How much of the image is filesystem metadata, per kind and in all?
SELECT device,
       kind,
       objects,
       bytes,
       round(100.0 * bytes / (SELECT max("end") FROM layout), 2) AS percent_of_image
FROM metadata
ORDER BY device, bytes DESC, kind;
SELECT sum(objects) AS objects,
       sum(bytes) AS bytes,
       round(100.0 * sum(bytes) / (SELECT max("end") FROM layout), 2) AS percent_of_image
FROM metadata;
