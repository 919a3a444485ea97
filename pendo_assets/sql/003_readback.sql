-- 003: reading metrics back from Planhat (DESIGN.md section 5, Read-back).

-- Which metric days were read back from Planhat (GET /dimensiondata), when, and by which run:
-- the keys metric_drift compares. A later read-back of a day replaces its rows.
CREATE TABLE planhat_readback_days (
    day          DATE      NOT NULL,
    dimension_id VARCHAR   NOT NULL,
    read_at      TIMESTAMP NOT NULL,
    run_id       VARCHAR,
    PRIMARY KEY (day, dimension_id)
);

-- What Planhat held per metric key of those days: one point per item it received; their sum
-- (what a `sum` metric shows) and the latest (what a `last` metric shows).
CREATE TABLE planhat_metric_readback (
    day          DATE      NOT NULL,
    model        VARCHAR   NOT NULL,
    external_id  VARCHAR   NOT NULL,
    dimension_id VARCHAR   NOT NULL,
    points       BIGINT    NOT NULL,
    sum_value    DOUBLE    NOT NULL,
    last_value   DOUBLE    NOT NULL,
    read_at      TIMESTAMP NOT NULL,
    run_id       VARCHAR
);

-- Items of `pendo-planhat resend-metrics`: they bring Planhat back to what the ledger says
-- it holds, so a `sum` repair does not add to the ledger's sum.
ALTER TABLE outbox_metric_items ADD COLUMN repair BOOLEAN DEFAULT false;

-- As in 002, plus: repair items left out of sum_value, and when the key was last sent.
CREATE OR REPLACE VIEW ledger_metrics AS
SELECT i.day, i.model, i.external_id, i.dimension_id,
       arg_max(i.aggregation, i.batch_id)                      AS aggregation,
       arg_max(i.value, i.batch_id)                            AS last_value,
       coalesce(SUM(i.value) FILTER (WHERE i.repair IS NOT TRUE), 0.0) AS sum_value,
       COUNT(*)::BIGINT                                        AS sends,
       max(b.sent_at)                                          AS last_sent_at
FROM outbox_metric_items AS i
JOIN outbox_batches AS b USING (batch_id)
WHERE b.status IN ('delivered', 'resolved_delivered') AND i.error IS NULL
GROUP BY ALL;

-- One row per metric key, read back after it was last sent, where Planhat's value differs from
-- what the ledger says was sent (`last`: the last value sent; `sum`: the sum sent). `planhat`
-- is null when Planhat has no value. Keys sent after the last read-back of their day wait for
-- the next one.
CREATE OR REPLACE VIEW metric_drift AS
WITH compared AS (
    SELECT l.day, l.model, l.external_id, l.dimension_id,
           CASE WHEN l.aggregation = 'sum' THEN l.sum_value ELSE l.last_value END AS sent,
           CASE WHEN l.aggregation = 'sum' THEN r.sum_value ELSE r.last_value END AS planhat
    FROM ledger_metrics AS l
    JOIN planhat_readback_days AS d USING (day, dimension_id)
    LEFT JOIN planhat_metric_readback AS r USING (day, model, external_id, dimension_id)
    WHERE l.last_sent_at <= d.read_at
)
SELECT day, model, external_id, dimension_id, sent, planhat
FROM compared
WHERE planhat IS NULL OR abs(planhat - sent) > greatest(abs(sent), 1.0) * 1e-9;
