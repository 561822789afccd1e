-- Whether a blob's bytes are known to be in the store (rows written before
-- this column were recorded by an evicting store around a completed write).
ALTER TABLE blobs ADD COLUMN stored INTEGER NOT NULL DEFAULT 1;

-- Blobs a queued or running action or an unfinished build needs: never evicted.
CREATE TABLE blob_pins (
    holder   TEXT    NOT NULL,
    function INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    PRIMARY KEY (holder, function, hash, size)
) WITHOUT ROWID;

CREATE INDEX blob_pins_by_blob ON blob_pins (function, hash, size);
