-- 004: lineage (DESIGN.md section 5, Lineage): every item ever sent, where each came from, and
-- the row-level diff a dry run shows.

-- How an activity's End User was found: 'externalId' (visitorId = externalId), 'email', 'created'.
ALTER TABLE matched_activities ADD COLUMN matched_by VARCHAR DEFAULT 'externalId';
ALTER TABLE outbox_activity_items ADD COLUMN matched_by VARCHAR DEFAULT 'externalId';
ALTER TABLE planned_activities ADD COLUMN matched_by VARCHAR DEFAULT 'externalId';

CREATE OR REPLACE VIEW sent_activities AS
SELECT l.day, l.external_id, l.action, l.sent AS count, m.matched_by
FROM ledger_activities AS l
LEFT JOIN (
    SELECT i.day, i.external_id, i.action, arg_max(i.matched_by, i.batch_id) AS matched_by
    FROM outbox_activity_items AS i
    JOIN outbox_batches AS b USING (batch_id)
    WHERE b.status IN ('delivered', 'resolved_delivered')
    GROUP BY ALL
) AS m USING (day, external_id, action);

-- One row per item Planhat accepted: the batch and Dagster run it went in, what it said.
CREATE OR REPLACE VIEW sent_items AS
SELECT i.batch_id, b.run_id, 'activities' AS kind, i.day, i.external_id, i.action AS key,
       i.count::DOUBLE AS amount, b.sent_at, i.matched_by
FROM outbox_activity_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered')
UNION ALL
SELECT i.batch_id, b.run_id, 'metrics', i.day, i.external_id, i.dimension_id,
       i.value, b.sent_at, 'externalId'
FROM outbox_metric_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered') AND i.error IS NULL;

-- For every sent key (kind, day, external_id, key), the landed Pendo rows it was counted from
-- and the rows of that day quarantined for it; `row` is the row as JSON.
CREATE OR REPLACE VIEW item_lineage AS
WITH sent_keys AS (SELECT DISTINCT kind, day, external_id, key FROM sent_items)
SELECT k.kind, k.day, k.external_id, k.key, 'raw_feature_events' AS source,
       r.num_events::DOUBLE AS amount, to_json(r)::VARCHAR AS row
FROM sent_keys AS k
JOIN feature_actions AS fa ON fa.action = k.key
JOIN raw_feature_events AS r
  ON r.day = k.day AND r.visitor_id = k.external_id AND r.feature_id = fa.feature_id
WHERE k.kind = 'activities'
UNION ALL
SELECT k.kind, k.day, k.external_id, k.key, 'quarantine_feature_events', NULL, q.raw
FROM sent_keys AS k
JOIN quarantine_feature_events AS q ON q.day = k.day
WHERE k.kind = 'activities'
  AND CASE WHEN json_valid(q.raw) THEN json_extract_string(q.raw, '$.visitorId') END = k.external_id
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

-- Key by key, where Planhat and Pendo differ: what Planhat has been sent, what Pendo says now
-- (the matched count or value; null: the key is gone) and what the last dry run of that day
-- would send (null: nothing, e.g. a count that fell, which cannot be retracted).
CREATE OR REPLACE VIEW dry_run_diff AS
SELECT 'activities' AS kind, day, NULL::VARCHAR AS model, external_id, action AS key,
       l.sent::DOUBLE AS sent, m.count::DOUBLE AS pendo, p.count::DOUBLE AS would_send,
       p.planned_at
FROM matched_activities AS m
FULL JOIN ledger_activities AS l USING (day, external_id, action)
LEFT JOIN planned_activities AS p USING (day, external_id, action)
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
