-- 006: Pendo pages and track events (DESIGN.md section 5, More Pendo sources), landed like
-- feature events with Pendo's row grain, one partition per subscription-local day.

-- One row per Pendo pageEvents row (visitor x account x page x day x ip x agent x server).
CREATE TABLE raw_page_events (
    day          DATE      NOT NULL,
    visitor_id   VARCHAR   NOT NULL,
    account_id   VARCHAR,
    page_id      VARCHAR   NOT NULL,
    app_id       BIGINT,
    day_ms       BIGINT    NOT NULL,
    num_events   BIGINT    NOT NULL,
    num_minutes  BIGINT    NOT NULL,
    remote_ip    VARCHAR,
    user_agent   VARCHAR,
    server       VARCHAR,
    extracted_at TIMESTAMP NOT NULL
);

CREATE TABLE quarantine_page_events (
    day          DATE      NOT NULL,
    reason       VARCHAR   NOT NULL,
    raw          VARCHAR   NOT NULL,
    page         INTEGER   NOT NULL,
    extracted_at TIMESTAMP NOT NULL
);

-- One row per Pendo trackEvents row (visitor x account x track type x day x ip x agent x server).
CREATE TABLE raw_track_events (
    day           DATE      NOT NULL,
    visitor_id    VARCHAR   NOT NULL,
    account_id    VARCHAR,
    track_type_id VARCHAR   NOT NULL,
    app_id        BIGINT,
    day_ms        BIGINT    NOT NULL,
    num_events    BIGINT    NOT NULL,
    num_minutes   BIGINT    NOT NULL,
    remote_ip     VARCHAR,
    user_agent    VARCHAR,
    server        VARCHAR,
    extracted_at  TIMESTAMP NOT NULL
);

CREATE TABLE quarantine_track_events (
    day          DATE      NOT NULL,
    reason       VARCHAR   NOT NULL,
    raw          VARCHAR   NOT NULL,
    page         INTEGER   NOT NULL,
    extracted_at TIMESTAMP NOT NULL
);

-- feature_actions also names pages and track types (Pendo ids are unique across them):
-- event_source says which ('feature_events' | 'page_events' | 'track_events').
ALTER TABLE feature_actions ADD COLUMN event_source VARCHAR DEFAULT 'feature_events';
