-- Blobs an evictor removed from `blobs` and is deleting from the store: a
-- write of the same blob waits until the row is gone, so the deletion never
-- removes bytes written after the eviction.
CREATE TABLE blob_deletions (
    function  INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    size      INTEGER NOT NULL,
    since_ms  INTEGER NOT NULL,
    PRIMARY KEY (function, hash, size)
) WITHOUT ROWID;
