-- 001: the warehouse as first released. One DuckDB file, default schema.
-- Dates are subscription-local calendar days (DATE); nothing is derived through UTC.

-- Raw Pendo feature events, one row per Pendo row (visitor x account x feature x day x ip x agent x server).
CREATE TABLE raw_feature_events (
    day          DATE      NOT NULL,
    visitor_id   VARCHAR   NOT NULL,
    account_id   VARCHAR,
    feature_id   VARCHAR   NOT NULL,
    app_id       BIGINT,
    day_ms       BIGINT    NOT NULL,
    num_events   BIGINT    NOT NULL,
    num_minutes  BIGINT    NOT NULL,
    remote_ip    VARCHAR,
    user_agent   VARCHAR,
    server       VARCHAR,
    extracted_at TIMESTAMP NOT NULL
);

-- Pendo rows that could not be landed as they are, with the reason and the row as Pendo sent it.
CREATE TABLE quarantine_feature_events (
    day          DATE      NOT NULL,
    reason       VARCHAR   NOT NULL,
    raw          VARCHAR   NOT NULL,
    page         INTEGER   NOT NULL,
    extracted_at TIMESTAMP NOT NULL
);

-- Raw Pendo pipeline results, one row per result row as Pendo sent it.
CREATE TABLE raw_pipeline_results (
    day          DATE      NOT NULL,
    pipeline     VARCHAR   NOT NULL,
    row_number   INTEGER   NOT NULL,
    row_json     VARCHAR   NOT NULL,
    extracted_at TIMESTAMP NOT NULL
);

-- Metric values read from pipeline results: one row per (day, pipeline, id, dimension).
CREATE TABLE pipeline_values (
    day          DATE      NOT NULL,
    pipeline     VARCHAR   NOT NULL,
    model        VARCHAR   NOT NULL,
    id           VARCHAR   NOT NULL,
    dimension_id VARCHAR   NOT NULL,
    value        DOUBLE    NOT NULL,
    aggregation  VARCHAR   NOT NULL
);

-- Pipeline result values that cannot be sent (no id, not a finite number, ...).
CREATE TABLE quarantine_pipeline_results (
    day          DATE      NOT NULL,
    pipeline     VARCHAR   NOT NULL,
    reason       VARCHAR   NOT NULL,
    raw          VARCHAR   NOT NULL,
    extracted_at TIMESTAMP NOT NULL
);

-- What was landed for each source and day.
CREATE TABLE landed_days (
    source       VARCHAR   NOT NULL,   -- 'feature_events' or 'pipeline:<name>'
    day          DATE      NOT NULL,
    rows         BIGINT    NOT NULL,
    quarantined  BIGINT    NOT NULL,
    pages        INTEGER   NOT NULL,
    extracted_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source, day)
);

-- Feature -> Planhat action, fixed the first time a feature is seen so a rename in Pendo
-- never splits one activity into two names.
CREATE TABLE feature_actions (
    feature_id   VARCHAR   PRIMARY KEY,
    action       VARCHAR   NOT NULL,
    weight       DOUBLE    NOT NULL,
    pendo_name   VARCHAR,
    source       VARCHAR   NOT NULL,   -- 'config' or 'pendo'
    updated_at   TIMESTAMP NOT NULL
);

-- The latest Planhat snapshot: End Users, Companies, Assets, Projects.
CREATE TABLE planhat_objects (
    model                VARCHAR   NOT NULL,
    object_id            VARCHAR   NOT NULL,
    external_id          VARCHAR,
    email                VARCHAR,
    company_id           VARCHAR,
    company_external_id  VARCHAR,
    name                 VARCHAR,
    snapshot_at          TIMESTAMP NOT NULL
);

-- Matching results per day (replaced for the days a run covers).
CREATE TABLE matched_activities (
    day                  DATE    NOT NULL,
    external_id          VARCHAR NOT NULL,
    action               VARCHAR NOT NULL,
    count                BIGINT  NOT NULL,
    weight               DOUBLE  NOT NULL,
    company_external_id  VARCHAR,
    feature_ids          VARCHAR NOT NULL
);

CREATE TABLE unmatched_visitor_rows (
    day         DATE    NOT NULL,
    visitor_id  VARCHAR NOT NULL,
    account_id  VARCHAR,
    reason      VARCHAR NOT NULL,
    num_events  BIGINT  NOT NULL
);

CREATE TABLE matched_metrics (
    day          DATE    NOT NULL,
    pipeline     VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    external_id  VARCHAR NOT NULL,
    dimension_id VARCHAR NOT NULL,
    value        DOUBLE  NOT NULL,
    aggregation  VARCHAR NOT NULL
);

CREATE TABLE unmatched_account_rows (
    day       DATE    NOT NULL,
    pipeline  VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    id        VARCHAR NOT NULL,
    reason    VARCHAR NOT NULL
);

-- The outbox: every batch is written here before it is sent. Its items, once the batch is
-- delivered, are the ledger of what Planhat holds. (outbox_batch_ids is no longer used: batch
-- ids are one past the highest, which DuckLake also supports; it stays so that every DuckDB file,
-- old or new, has one schema.)
CREATE SEQUENCE outbox_batch_ids START 1;

CREATE TABLE outbox_batches (
    batch_id     BIGINT    PRIMARY KEY,
    kind         VARCHAR   NOT NULL,   -- 'activities' | 'metrics'
    aggregation  VARCHAR,              -- metrics only: 'last' | 'sum'
    status       VARCHAR   NOT NULL,   -- prepared, sending, delivered, failed, discarded, in_doubt, resolved_delivered, resolved_resend
    items        BIGINT    NOT NULL,
    body_bytes   BIGINT    NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    sent_at      TIMESTAMP,
    settled_at   TIMESTAMP,
    run_id       VARCHAR,
    note         VARCHAR
);

CREATE TABLE outbox_activity_items (
    batch_id             BIGINT  NOT NULL,
    day                  DATE    NOT NULL,
    external_id          VARCHAR NOT NULL,
    action               VARCHAR NOT NULL,
    count                BIGINT  NOT NULL,
    weight               DOUBLE  NOT NULL,
    company_external_id  VARCHAR,
    feature_ids          VARCHAR NOT NULL
);

CREATE TABLE outbox_metric_items (
    batch_id      BIGINT  NOT NULL,
    day           DATE    NOT NULL,
    model         VARCHAR NOT NULL,
    external_id   VARCHAR NOT NULL,
    dimension_id  VARCHAR NOT NULL,
    value         DOUBLE  NOT NULL,
    aggregation   VARCHAR NOT NULL,
    error         VARCHAR              -- set when Planhat reported this item as failed
);

-- Plans written by --dry-run: what a real run would send now.
CREATE TABLE planned_activities (
    day                  DATE    NOT NULL,
    external_id          VARCHAR NOT NULL,
    action               VARCHAR NOT NULL,
    count                BIGINT  NOT NULL,
    weight               DOUBLE  NOT NULL,
    company_external_id  VARCHAR,
    feature_ids          VARCHAR NOT NULL,
    planned_at           TIMESTAMP NOT NULL
);

CREATE TABLE planned_metrics (
    day           DATE    NOT NULL,
    model         VARCHAR NOT NULL,
    external_id   VARCHAR NOT NULL,
    dimension_id  VARCHAR NOT NULL,
    value         DOUBLE  NOT NULL,
    aggregation   VARCHAR NOT NULL,
    planned_at    TIMESTAMP NOT NULL
);
