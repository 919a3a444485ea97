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

-- An activity's ids per source, for its `info` (pageId, trackTypeId; feature_ids is '' when the
-- action has no feature): comma-separated, null when none.
ALTER TABLE matched_activities ADD COLUMN page_ids VARCHAR;
ALTER TABLE matched_activities ADD COLUMN track_type_ids VARCHAR;
ALTER TABLE outbox_activity_items ADD COLUMN page_ids VARCHAR;
ALTER TABLE outbox_activity_items ADD COLUMN track_type_ids VARCHAR;
ALTER TABLE planned_activities ADD COLUMN page_ids VARCHAR;
ALTER TABLE planned_activities ADD COLUMN track_type_ids VARCHAR;

-- The rows of every event source, the item's id in one column: what matching reads.
CREATE OR REPLACE VIEW activity_events AS
SELECT 'feature_events' AS event_source, day, visitor_id, account_id, feature_id AS item_id,
       num_events
FROM raw_feature_events
UNION ALL
SELECT 'page_events', day, visitor_id, account_id, page_id, num_events FROM raw_page_events
UNION ALL
SELECT 'track_events', day, visitor_id, account_id, track_type_id, num_events
FROM raw_track_events;

-- 005's activity_drift, over the days any activity source landed.
CREATE OR REPLACE VIEW activity_drift AS
SELECT l.day, l.external_id, l.action, l.sent, COALESCE(m.count, 0)::BIGINT AS source,
       l.enduser_id
FROM ledger_activities AS l
LEFT JOIN matched_activities AS m USING (day, enduser_id, action)
WHERE COALESCE(m.count, 0) < l.sent
  AND l.day IN (
      SELECT day FROM landed_days
      WHERE source IN ('feature_events', 'page_events', 'track_events')
  );

-- 005's item_lineage, with the page and track event rows an activity was counted from.
CREATE OR REPLACE VIEW item_lineage AS
WITH sent_keys AS (SELECT DISTINCT kind, day, external_id, key FROM sent_items),
-- The visitors behind an activity key: as matched that day (by externalId or email), or, for
-- days matched before End Users were recorded per visitor, the visitor of that externalId.
key_visitors AS (
    SELECT k.kind, k.day, k.external_id, k.key, COALESCE(v.visitor_id, k.external_id) AS visitor_id
    FROM sent_keys AS k
    LEFT JOIN (SELECT DISTINCT day, external_id, visitor_id FROM visitor_end_users) AS v
      ON v.day = k.day AND v.external_id = k.external_id
    WHERE k.kind = 'activities'
)
SELECT k.kind, k.day, k.external_id, k.key, e.source, e.num_events::DOUBLE AS amount, e.row
FROM key_visitors AS k
JOIN feature_actions AS fa ON fa.action = k.key
JOIN (
    SELECT 'raw_feature_events' AS source, day, visitor_id, feature_id AS item_id, num_events,
           to_json(r)::VARCHAR AS row
    FROM raw_feature_events AS r
    UNION ALL
    SELECT 'raw_page_events', day, visitor_id, page_id, num_events, to_json(r)::VARCHAR
    FROM raw_page_events AS r
    UNION ALL
    SELECT 'raw_track_events', day, visitor_id, track_type_id, num_events, to_json(r)::VARCHAR
    FROM raw_track_events AS r
) AS e ON e.day = k.day AND e.visitor_id = k.visitor_id AND e.item_id = fa.feature_id
UNION ALL
SELECT k.kind, k.day, k.external_id, k.key, q.source, NULL, q.raw
FROM key_visitors AS k
JOIN (
    SELECT 'quarantine_feature_events' AS source, day, raw FROM quarantine_feature_events
    UNION ALL
    SELECT 'quarantine_page_events', day, raw FROM quarantine_page_events
    UNION ALL
    SELECT 'quarantine_track_events', day, raw FROM quarantine_track_events
) AS q ON q.day = k.day
WHERE CASE WHEN json_valid(q.raw) THEN json_extract_string(q.raw, '$.visitorId') END = k.visitor_id
UNION ALL
SELECT k.kind, k.day, k.external_id, k.key, 'raw_pipeline_results', v.value, r.row_json
FROM sent_keys AS k
JOIN pipeline_values AS v ON v.day = k.day AND v.id = k.external_id AND v.dimension_id = k.key
JOIN raw_pipeline_results AS r ON r.day = v.day AND r.pipeline = v.pipeline
WHERE k.kind = 'metrics' AND list_contains(json_extract_string(r.row_json, '$.*'), k.external_id)
UNION ALL
SELECT k.kind, k.day, k.external_id, k.key, 'quarantine_pipeline_results', NULL, q.raw
FROM sent_keys AS k
JOIN (SELECT DISTINCT day, pipeline, id, dimension_id FROM pipeline_values) AS v
  ON v.day = k.day AND v.id = k.external_id AND v.dimension_id = k.key
JOIN quarantine_pipeline_results AS q ON q.day = v.day AND q.pipeline = v.pipeline
WHERE k.kind = 'metrics'
  AND CASE WHEN json_valid(q.raw) THEN list_contains(json_extract_string(q.raw, '$.*'), k.external_id) END;
