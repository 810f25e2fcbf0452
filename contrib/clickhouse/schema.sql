-- LMGate usage records in ClickHouse: one row per record line of the stats file, inserted
-- as the lines are (`INSERT INTO lmgate.usage FORMAT JSONEachRow` with
-- `input_format_skip_unknown_fields=1`, so a newer gateway's extra fields are ignored).
--
-- Re-sent rows are harmless: the sorting key ends with `request_id` (unique per record,
-- across instances and restarts), ReplacingMergeTree keeps one row per key, and every
-- read LMGate makes uses FINAL, which removes duplicates not yet merged away.
--
-- `timestamp` keeps the record's text (RFC 3339, milliseconds, UTC) because a DateTime
-- drops the milliseconds; `time` is derived from it for partitions and ranges.
--
-- Tested on ClickHouse 18.16 (Debian 12's package) and written to what current releases
-- accept. `lmgate check` compares a running server's table with this file.
CREATE DATABASE IF NOT EXISTS lmgate;

CREATE TABLE IF NOT EXISTS lmgate.usage
(
    timestamp String,
    time DateTime MATERIALIZED parseDateTimeBestEffort(timestamp),
    lmgate_id Nullable(String),
    provider Nullable(String),
    endpoint String,
    model Nullable(String),
    status UInt16,
    input_tokens Nullable(UInt64),
    output_tokens Nullable(UInt64),
    cache_read_input_tokens Nullable(UInt64),
    cache_creation_input_tokens Nullable(UInt64),
    reasoning_tokens Nullable(UInt64),
    masked_key Nullable(String),
    error_type Nullable(String),
    usage_status String,
    stream UInt8,
    duration_ms UInt64,
    cost_micros Nullable(UInt64),
    cost_status String,
    request_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (time, request_id);
