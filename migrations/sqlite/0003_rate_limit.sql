-- A key's own rate limit: `rate_limit_requests` in any `rate_limit_per_seconds` seconds.
-- Both set, or both NULL (no limit of its own). Existing keys keep what they had: no limit.
ALTER TABLE tower_api_keys ADD COLUMN rate_limit_requests INTEGER
    CHECK (rate_limit_requests BETWEEN 1 AND 1000000);
ALTER TABLE tower_api_keys ADD COLUMN rate_limit_per_seconds INTEGER
    CHECK (rate_limit_per_seconds BETWEEN 1 AND 86400)
    CHECK ((rate_limit_requests IS NULL) = (rate_limit_per_seconds IS NULL));
