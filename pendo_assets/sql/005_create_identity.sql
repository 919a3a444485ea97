-- 005: identity (DESIGN.md section 5, Identity): visitors found by email as well as externalId,
-- End Users created for the others, and the activity ledger keyed by the End User (its Planhat
-- _id) rather than by the address an item was sent to, so a change of address never sends a
-- count twice.

-- The End User of an activity (Planhat _id), and its email when it has no externalId: the item
-- is then addressed by email (external_id holds that email too, as the key a user reads).
ALTER TABLE matched_activities ADD COLUMN enduser_id VARCHAR;
ALTER TABLE matched_activities ADD COLUMN email VARCHAR;
ALTER TABLE outbox_activity_items ADD COLUMN enduser_id VARCHAR;
ALTER TABLE outbox_activity_items ADD COLUMN email VARCHAR;
ALTER TABLE planned_activities ADD COLUMN enduser_id VARCHAR;
ALTER TABLE planned_activities ADD COLUMN email VARCHAR;

-- Rows from before: the End User holding the externalId in the last snapshot, else a key made
-- of the externalId (Planhat's own `extid-` prefix), which no _id can equal.
UPDATE outbox_activity_items SET enduser_id = u.object_id
FROM (
    SELECT external_id, any_value(object_id) AS object_id
    FROM planhat_objects
    WHERE model = 'EndUser' AND external_id IS NOT NULL AND external_id <> ''
    GROUP BY external_id
    HAVING count(*) = 1
) AS u
WHERE outbox_activity_items.external_id = u.external_id;
UPDATE outbox_activity_items SET enduser_id = 'extid-' || external_id WHERE enduser_id IS NULL;
UPDATE matched_activities SET enduser_id = u.object_id
FROM (
    SELECT external_id, any_value(object_id) AS object_id
    FROM planhat_objects
    WHERE model = 'EndUser' AND external_id IS NOT NULL AND external_id <> ''
    GROUP BY external_id
    HAVING count(*) = 1
) AS u
WHERE matched_activities.external_id = u.external_id;
UPDATE matched_activities SET enduser_id = 'extid-' || external_id WHERE enduser_id IS NULL;
DELETE FROM planned_activities;

-- Pendo's visitors, read whole at every sync that matches by email or creates End Users.
CREATE TABLE pendo_visitors (
    visitor_id   VARCHAR   NOT NULL,
    email        VARCHAR,              -- the configured field, as Pendo holds it
    account_ids  VARCHAR[],            -- metadata.auto.accountids, in Pendo's order
    landed_at    TIMESTAMP NOT NULL
);

CREATE TABLE quarantine_visitors (
    reason     VARCHAR   NOT NULL,
    raw        VARCHAR   NOT NULL,
    landed_at  TIMESTAMP NOT NULL
);

-- Per day, the End User each (visitor, account) of the day's usage was matched to.
CREATE TABLE visitor_end_users (
    day          DATE    NOT NULL,
    visitor_id   VARCHAR NOT NULL,
    account_id   VARCHAR,
    enduser_id   VARCHAR NOT NULL,
    external_id  VARCHAR NOT NULL,
    matched_by   VARCHAR NOT NULL
);

-- End Users this sync asked Planhat to create, one row per attempt. status: sending (asked, no
-- answer yet: settled by the next run reading the End User back), created, existed (Planhat
-- already had one with the externalId), failed (Planhat refused it: error), not_created (the
-- answer never came and the read-back found none).
CREATE TABLE end_user_creations (
    external_id          VARCHAR   NOT NULL,
    email                VARCHAR   NOT NULL,
    company_id           VARCHAR   NOT NULL,
    company_external_id  VARCHAR   NOT NULL,
    status               VARCHAR   NOT NULL,
    enduser_id           VARCHAR,
    error                VARCHAR,
    requested_at         TIMESTAMP NOT NULL,
    settled_at           TIMESTAMP,
    run_id               VARCHAR
);

-- Written by --dry-run: who a real run would create now.
CREATE TABLE planned_end_users (
    external_id          VARCHAR   NOT NULL,
    email                VARCHAR   NOT NULL,
    company_external_id  VARCHAR   NOT NULL,
    planned_at           TIMESTAMP NOT NULL
);

CREATE OR REPLACE VIEW created_end_users AS
SELECT external_id, email, company_external_id, settled_at AS created_at, run_id, enduser_id
FROM end_user_creations
WHERE status = 'created';

-- The ledger, keyed by the End User; external_id is the address it was last sent to.
CREATE OR REPLACE VIEW ledger_activities AS
SELECT i.day, i.enduser_id, i.action, arg_max(i.external_id, i.batch_id) AS external_id,
       SUM(i.count)::BIGINT AS sent
FROM outbox_activity_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered')
GROUP BY i.day, i.enduser_id, i.action;

CREATE OR REPLACE VIEW held_activity_keys AS
SELECT DISTINCT i.day, i.enduser_id, i.action
FROM outbox_activity_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status = 'in_doubt';

CREATE OR REPLACE VIEW sent_activities AS
SELECT l.day, l.external_id, l.action, l.sent AS count, m.matched_by, l.enduser_id
FROM ledger_activities AS l
LEFT JOIN (
    SELECT i.day, i.enduser_id, i.action, arg_max(i.matched_by, i.batch_id) AS matched_by
    FROM outbox_activity_items AS i
    JOIN outbox_batches AS b USING (batch_id)
    WHERE b.status IN ('delivered', 'resolved_delivered')
    GROUP BY ALL
) AS m USING (day, enduser_id, action);

-- Keys whose Pendo count (as matched now) fell below what Planhat already holds.
CREATE OR REPLACE VIEW activity_drift AS
SELECT l.day, l.external_id, l.action, l.sent, COALESCE(m.count, 0)::BIGINT AS source,
       l.enduser_id
FROM ledger_activities AS l
LEFT JOIN matched_activities AS m USING (day, enduser_id, action)
WHERE COALESCE(m.count, 0) < l.sent
  AND l.day IN (SELECT day FROM landed_days WHERE source = 'feature_events');

CREATE OR REPLACE VIEW pending_activities AS
SELECT m.day, m.external_id, m.action, m.count - COALESCE(l.sent, 0) AS count, m.enduser_id
FROM matched_activities AS m
LEFT JOIN ledger_activities AS l USING (day, enduser_id, action)
WHERE m.count > COALESCE(l.sent, 0)
  AND (m.day, m.enduser_id, m.action) NOT IN (SELECT day, enduser_id, action FROM held_activity_keys);

CREATE OR REPLACE VIEW dry_run_diff AS
SELECT 'activities' AS kind, day, NULL::VARCHAR AS model,
       COALESCE(m.external_id, l.external_id) AS external_id, action AS key,
       l.sent::DOUBLE AS sent, m.count::DOUBLE AS pendo, p.count::DOUBLE AS would_send,
       p.planned_at
FROM matched_activities AS m
FULL JOIN ledger_activities AS l USING (day, enduser_id, action)
LEFT JOIN planned_activities AS p USING (day, enduser_id, action)
WHERE (l.sent IS DISTINCT FROM m.count OR p.count IS NOT NULL)
UNION ALL
SELECT 'metrics', day, model, external_id, dimension_id,
       CASE WHEN l.aggregation = 'sum' THEN l.sum_value ELSE l.last_value END,
       m.value, p.value, p.planned_at
FROM matched_metrics AS m
FULL JOIN ledger_metrics AS l USING (day, model, external_id, dimension_id)
LEFT JOIN planned_metrics AS p USING (day, model, external_id, dimension_id)
WHERE (CASE WHEN l.aggregation = 'sum' THEN l.sum_value ELSE l.last_value END
       IS DISTINCT FROM m.value OR p.value IS NOT NULL);

-- For every sent key (kind, day, external_id, key), the landed Pendo rows it was counted from
-- and the rows of that day quarantined for it; `row` is the row as JSON.
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
SELECT k.kind, k.day, k.external_id, k.key, 'raw_feature_events' AS source,
       r.num_events::DOUBLE AS amount, to_json(r)::VARCHAR AS row
FROM key_visitors AS k
JOIN feature_actions AS fa ON fa.action = k.key
JOIN raw_feature_events AS r
  ON r.day = k.day AND r.visitor_id = k.visitor_id AND r.feature_id = fa.feature_id
UNION ALL
SELECT k.kind, k.day, k.external_id, k.key, 'quarantine_feature_events', NULL, q.raw
FROM key_visitors AS k
JOIN quarantine_feature_events AS q ON q.day = k.day
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
