-- A key's own rate limit: `rate_limit_requests` in any `rate_limit_per_seconds` seconds.
-- Both set, or both NULL (no limit of its own). Existing keys keep what they had: no limit.
ALTER TABLE tower_api_keys
    ADD COLUMN rate_limit_requests    integer CHECK (rate_limit_requests BETWEEN 1 AND 1000000),
    ADD COLUMN rate_limit_per_seconds integer CHECK (rate_limit_per_seconds BETWEEN 1 AND 86400),
    ADD CONSTRAINT tower_api_keys_rate_limit_check CHECK (
        (rate_limit_requests IS NULL) = (rate_limit_per_seconds IS NULL)
    );

-- The rate limit travels with a cached key, so its changes notify like the scopes' do.
DROP TRIGGER tower_api_keys_notify_update ON tower_api_keys;

CREATE TRIGGER tower_api_keys_notify_update
    AFTER UPDATE ON tower_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.account_id, OLD.prefix, OLD.digest, OLD.status, OLD.scopes,
           OLD.expires_at, OLD.previous_prefix, OLD.previous_digest, OLD.previous_expires_at,
           OLD.rate_limit_requests, OLD.rate_limit_per_seconds)
          IS DISTINCT FROM
          (NEW.id, NEW.account_id, NEW.prefix, NEW.digest, NEW.status, NEW.scopes,
           NEW.expires_at, NEW.previous_prefix, NEW.previous_digest, NEW.previous_expires_at,
           NEW.rate_limit_requests, NEW.rate_limit_per_seconds))
    EXECUTE FUNCTION tower_api_keys_notify();
