-- Headline numbers of a run: what its days ($days) landed and matched, and what the run
-- ($run_id) sent. One row; `pendo-planhat sync` prints it.
SELECT
    len($days::DATE[]) AS days,
    (SELECT SUM(num_events) FROM raw_feature_events WHERE day IN (SELECT UNNEST($days::DATE[]))) AS events_landed,
    (SELECT SUM(num_events) FROM raw_page_events WHERE day IN (SELECT UNNEST($days::DATE[]))) AS page_events_landed,
    (SELECT SUM(num_events) FROM raw_track_events WHERE day IN (SELECT UNNEST($days::DATE[]))) AS track_events_landed,
    (SELECT SUM(rows) FROM landed_days
      WHERE source = 'feature_events' AND day IN (SELECT UNNEST($days::DATE[]))) AS rows_landed,
    (SELECT SUM(quarantined) FROM landed_days WHERE day IN (SELECT UNNEST($days::DATE[]))) AS rows_quarantined,
    (SELECT COUNT(*) FROM matched_activities WHERE day IN (SELECT UNNEST($days::DATE[]))) AS activity_keys_matched,
    (SELECT SUM(count) FROM matched_activities WHERE day IN (SELECT UNNEST($days::DATE[]))) AS events_matched,
    (SELECT COUNT(*) FROM matched_activities
      WHERE page_ids IS NOT NULL AND day IN (SELECT UNNEST($days::DATE[]))) AS activity_keys_from_pages,
    (SELECT COUNT(*) FROM matched_activities
      WHERE track_type_ids IS NOT NULL AND day IN (SELECT UNNEST($days::DATE[]))) AS activity_keys_from_track_events,
    (SELECT SUM(count) FROM matched_activities
      WHERE matched_by = 'externalId' AND day IN (SELECT UNNEST($days::DATE[]))) AS events_matched_by_externalId,
    (SELECT SUM(count) FROM matched_activities
      WHERE matched_by = 'email' AND day IN (SELECT UNNEST($days::DATE[]))) AS events_matched_by_email,
    (SELECT SUM(count) FROM matched_activities
      WHERE matched_by = 'created' AND day IN (SELECT UNNEST($days::DATE[]))) AS events_matched_by_created,
    (SELECT SUM(num_events) FROM unmatched_visitors
      WHERE reason = 'anonymous' AND day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_anonymous,
    (SELECT SUM(num_events) FROM unmatched_visitors
      WHERE reason = 'no_enduser' AND day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_no_enduser,
    (SELECT SUM(num_events) FROM unmatched_visitors
      WHERE reason = 'ambiguous' AND day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_ambiguous,
    (SELECT SUM(num_events) FROM unmatched_visitors
      WHERE reason = 'ambiguous_email' AND day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_ambiguous_email,
    (SELECT COUNT(DISTINCT visitor_id) FROM unmatched_visitors
      WHERE day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_visitors,
    (SELECT COUNT(*) FROM created_end_users WHERE run_id = $run_id) AS end_users_created,
    (SELECT COUNT(*) FROM matched_metrics WHERE day IN (SELECT UNNEST($days::DATE[]))) AS metric_values_matched,
    (SELECT COUNT(DISTINCT id) FROM unmatched_accounts
      WHERE day IN (SELECT UNNEST($days::DATE[]))) AS unmatched_account_ids,
    (SELECT COUNT(*) FROM outbox_activity_items JOIN outbox_batches USING (batch_id)
      WHERE run_id = $run_id AND status = 'delivered') AS activity_items_sent,
    (SELECT SUM(count) FROM outbox_activity_items JOIN outbox_batches USING (batch_id)
      WHERE run_id = $run_id AND status = 'delivered') AS activity_events_sent,
    (SELECT COUNT(*) FROM outbox_metric_items JOIN outbox_batches USING (batch_id)
      WHERE run_id = $run_id AND status = 'delivered' AND error IS NULL) AS metric_items_sent,
    (SELECT COUNT(*) FROM outbox_batches WHERE run_id = $run_id AND sent_at IS NOT NULL) AS requests,
    (SELECT COUNT(*) FROM activity_drift) AS drift_keys,
    (SELECT COUNT(*) FROM metric_drift) AS metric_drift_keys;
