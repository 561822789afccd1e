-- The shard each blob lives on (the shard's name; '' for an unsharded store).
ALTER TABLE blobs ADD COLUMN shard TEXT NOT NULL DEFAULT '';

-- Pins lapse: a holder that crashed stops renewing them.
ALTER TABLE blob_pins ADD COLUMN until_ms BIGINT NOT NULL DEFAULT 9223372036854775807;

CREATE INDEX blob_pins_by_expiry ON blob_pins (until_ms);

-- The action cache: ActionResult protos by key (the action digest, mixed
-- with the instance name for other instances than "").
CREATE TABLE action_results (
    function    SMALLINT NOT NULL,
    hash        BYTEA    NOT NULL,
    size        BIGINT   NOT NULL,
    result      BYTEA    NOT NULL,
    updated_ms  BIGINT   NOT NULL,
    last_access BIGINT   NOT NULL,
    PRIMARY KEY (function, hash, size)
);
