-- One row per operation the scheduler knows: queued, executing or recently completed.
CREATE TABLE operations (
    name              TEXT    PRIMARY KEY,
    instance_name     TEXT    NOT NULL,
    digest_function   BIGINT  NOT NULL,
    action_hash       BLOB    NOT NULL,
    action_size       BIGINT  NOT NULL,
    client            TEXT    NOT NULL,
    priority          BIGINT  NOT NULL,
    skip_cache_lookup BIGINT  NOT NULL,
    stage             BIGINT  NOT NULL,
    attempts          BIGINT  NOT NULL,
    worker            TEXT,
    queued_at_ms      BIGINT  NOT NULL,
    updated_at_ms     BIGINT  NOT NULL,
    response          BLOB
);
CREATE INDEX operations_by_stage ON operations (stage, updated_at_ms);
