-- One row per blob of the cluster's CAS: its size, when it was last used and
-- whether its bytes are known to be stored (else a write is under way).
CREATE TABLE blobs (
    function    SMALLINT NOT NULL,
    hash        BYTEA    NOT NULL,
    size        BIGINT   NOT NULL,
    last_access BIGINT   NOT NULL,
    stored      BOOLEAN  NOT NULL DEFAULT FALSE,
    PRIMARY KEY (function, hash, size)
);

CREATE INDEX blobs_by_last_access ON blobs (last_access);

-- Blobs a queued or running action or an unfinished build needs: never evicted.
CREATE TABLE blob_pins (
    holder   TEXT     NOT NULL,
    function SMALLINT NOT NULL,
    hash     BYTEA    NOT NULL,
    size     BIGINT   NOT NULL,
    PRIMARY KEY (holder, function, hash, size)
);

CREATE INDEX blob_pins_by_blob ON blob_pins (function, hash, size);
