-- 002: the views a user queries (DESIGN.md section 5) and the ledger derived from the outbox.

CREATE OR REPLACE VIEW unmatched_visitors AS
SELECT day, visitor_id, account_id, reason, num_events
FROM unmatched_visitor_rows;

CREATE OR REPLACE VIEW unmatched_accounts AS
SELECT day, pipeline, model, id, reason
FROM unmatched_account_rows;

-- What Planhat holds: items of delivered batches (and batches a user marked delivered).
CREATE OR REPLACE VIEW ledger_activities AS
SELECT i.day, i.external_id, i.action, SUM(i.count)::BIGINT AS sent
FROM outbox_activity_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered')
GROUP BY ALL;

CREATE OR REPLACE VIEW ledger_metrics AS
SELECT i.day, i.model, i.external_id, i.dimension_id,
       arg_max(i.aggregation, i.batch_id) AS aggregation,
       arg_max(i.value, i.batch_id)       AS last_value,
       SUM(i.value)                       AS sum_value,
       COUNT(*)::BIGINT                   AS sends
FROM outbox_metric_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered') AND i.error IS NULL
GROUP BY ALL;

CREATE OR REPLACE VIEW sent_activities AS
SELECT day, external_id, action, sent AS count
FROM ledger_activities;

CREATE OR REPLACE VIEW sent_metrics AS
SELECT day, model, external_id, dimension_id,
       CASE WHEN aggregation = 'sum' THEN sum_value ELSE last_value END AS value,
       aggregation, sends
FROM ledger_metrics;

CREATE OR REPLACE VIEW batches_in_doubt AS
SELECT batch_id, kind, items, sent_at, aggregation, note
FROM outbox_batches
WHERE status = 'in_doubt';

-- Items held back because they sit in a batch whose outcome is unknown.
CREATE OR REPLACE VIEW held_activity_keys AS
SELECT DISTINCT i.day, i.external_id, i.action
FROM outbox_activity_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status = 'in_doubt';

CREATE OR REPLACE VIEW held_metric_keys AS
SELECT DISTINCT i.day, i.model, i.external_id, i.dimension_id
FROM outbox_metric_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status = 'in_doubt';

-- Pendo's current count per (visitor, action, day), across all features mapped to the action.
CREATE OR REPLACE VIEW activity_source AS
SELECT r.day, r.visitor_id AS external_id, fa.action, SUM(r.num_events)::BIGINT AS source
FROM raw_feature_events AS r
JOIN feature_actions AS fa USING (feature_id)
GROUP BY ALL;

-- Keys whose Pendo count fell below what Planhat already holds (cannot be retracted).
CREATE OR REPLACE VIEW activity_drift AS
SELECT l.day, l.external_id, l.action, l.sent, COALESCE(s.source, 0)::BIGINT AS source
FROM ledger_activities AS l
LEFT JOIN activity_source AS s USING (day, external_id, action)
WHERE COALESCE(s.source, 0) < l.sent
  AND l.day IN (SELECT day FROM landed_days WHERE source = 'feature_events');

-- What the next run would send for the days already matched (positive deltas only).
CREATE OR REPLACE VIEW pending_activities AS
SELECT m.day, m.external_id, m.action, m.count - COALESCE(l.sent, 0) AS count
FROM matched_activities AS m
LEFT JOIN ledger_activities AS l USING (day, external_id, action)
WHERE m.count > COALESCE(l.sent, 0)
  AND (m.day, m.external_id, m.action) NOT IN (SELECT day, external_id, action FROM held_activity_keys);
