-- A key's quota (`quota_requests` accepted requests per calendar `quota_period`, UTC: both
-- set or both NULL), its address allowlist (CIDR blocks joined by single spaces) and its
-- metadata (a JSON object in compact form, kept as written). Existing keys keep what they
-- had: none of them.
ALTER TABLE tower_api_keys
    ADD COLUMN quota_requests integer CHECK (quota_requests BETWEEN 1 AND 1000000000),
    ADD COLUMN quota_period   text    CHECK (quota_period IN ('day', 'month')),
    ADD COLUMN allowed_ips    text,
    ADD COLUMN metadata       text    CHECK (octet_length(metadata) <= 4096),
    ADD CONSTRAINT tower_api_keys_quota_check CHECK (
        (quota_requests IS NULL) = (quota_period IS NULL)
    );

-- All three travel with a cached key, so their changes notify like the rate limit's do.
DROP TRIGGER tower_api_keys_notify_update ON tower_api_keys;

CREATE TRIGGER tower_api_keys_notify_update
    AFTER UPDATE ON tower_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.account_id, OLD.prefix, OLD.digest, OLD.status, OLD.scopes,
           OLD.expires_at, OLD.previous_prefix, OLD.previous_digest, OLD.previous_expires_at,
           OLD.rate_limit_requests, OLD.rate_limit_per_seconds,
           OLD.quota_requests, OLD.quota_period, OLD.allowed_ips, OLD.metadata)
          IS DISTINCT FROM
          (NEW.id, NEW.account_id, NEW.prefix, NEW.digest, NEW.status, NEW.scopes,
           NEW.expires_at, NEW.previous_prefix, NEW.previous_digest, NEW.previous_expires_at,
           NEW.rate_limit_requests, NEW.rate_limit_per_seconds,
           NEW.quota_requests, NEW.quota_period, NEW.allowed_ips, NEW.metadata))
    EXECUTE FUNCTION tower_api_keys_notify();
