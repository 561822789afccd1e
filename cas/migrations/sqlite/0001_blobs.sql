-- One row per blob held by an evicting store: its size and when it was last used.
CREATE TABLE blobs (
    function    INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    PRIMARY KEY (function, hash, size)
) WITHOUT ROWID;

CREATE INDEX blobs_by_last_access ON blobs (last_access);
