-- A key's quota (`quota_requests` accepted requests per calendar `quota_period`, UTC: both
-- set or both NULL), its address allowlist (CIDR blocks joined by single spaces) and its
-- metadata (a JSON object in compact form). Existing keys keep what they had: none of them.
ALTER TABLE tower_api_keys ADD COLUMN quota_requests INTEGER
    CHECK (quota_requests BETWEEN 1 AND 1000000000);
ALTER TABLE tower_api_keys ADD COLUMN quota_period TEXT
    CHECK (quota_period IN ('day', 'month'))
    CHECK ((quota_requests IS NULL) = (quota_period IS NULL));
ALTER TABLE tower_api_keys ADD COLUMN allowed_ips TEXT;
ALTER TABLE tower_api_keys ADD COLUMN metadata TEXT CHECK (length(CAST(metadata AS BLOB)) <= 4096);
