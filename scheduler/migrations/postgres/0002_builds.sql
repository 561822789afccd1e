-- One row per remote Dockerfile build: running, or finished and kept for Watch and ListBuilds.
CREATE TABLE builds (
    id              TEXT    PRIMARY KEY,
    instance_name   TEXT    NOT NULL,
    dockerfile_name TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    created_ms      BIGINT  NOT NULL,
    finished_ms     BIGINT,
    message         TEXT    NOT NULL,
    request         BYTEA   NOT NULL
);
CREATE INDEX builds_by_instance ON builds (instance_name, created_ms);
CREATE INDEX builds_by_state ON builds (state, created_ms);
CREATE INDEX builds_by_finish ON builds (finished_ms);

-- A build's encoded events, in sequence order, replayed by Watch.
CREATE TABLE build_events (
    build_id TEXT    NOT NULL REFERENCES builds (id),
    sequence BIGINT  NOT NULL,
    event    BYTEA   NOT NULL,
    PRIMARY KEY (build_id, sequence)
);
