-- Blobs an evictor removed from `blobs` and is deleting from the store: a
-- write of the same blob waits until the row is gone, so the deletion never
-- removes bytes written after the eviction.
CREATE TABLE blob_deletions (
    function  SMALLINT NOT NULL,
    hash      BYTEA    NOT NULL,
    size      BIGINT   NOT NULL,
    since_ms  BIGINT   NOT NULL,
    PRIMARY KEY (function, hash, size)
);
