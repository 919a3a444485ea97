-- What Planhat holds per metric key of $days: last_value (NULL when unknown) and sum_value.
-- A `last` batch sent without a recorded answer (then discarded at recovery) may hold the value
-- Planhat shows now: until a later batch of the key is delivered, its last value is unknown, so
-- the current value is sent again even if it equals the last one delivered.
WITH unknown_last AS (
    SELECT i.day, i.model, i.external_id, i.dimension_id
    FROM outbox_metric_items AS i JOIN outbox_batches AS b USING (batch_id)
    WHERE b.aggregation = 'last' AND b.sent_at IS NOT NULL
      AND i.day IN (SELECT UNNEST($days::DATE[]))
    GROUP BY ALL
    HAVING max(i.batch_id) FILTER (WHERE b.status = 'discarded')
         > coalesce(max(i.batch_id) FILTER (
               WHERE b.status IN ('delivered', 'resolved_delivered') AND i.error IS NULL), -1)
)
SELECT l.day, l.model, l.external_id, l.dimension_id,
       CASE WHEN u.day IS NULL THEN l.last_value END AS last_value, l.sum_value
FROM ledger_metrics AS l
LEFT JOIN unknown_last AS u USING (day, model, external_id, dimension_id)
WHERE l.day IN (SELECT UNNEST($days::DATE[]));
