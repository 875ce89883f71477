-- Key policy: a name, scopes, an expiry, and the previous key of a rotation with a grace
-- period. Existing keys keep what they had: no name, unrestricted, never expiring, no
-- previous key (every new column is NULL).
ALTER TABLE tower_api_keys
    ADD COLUMN name                text        CHECK (char_length(name) BETWEEN 1 AND 64),
    -- NULL: unrestricted; '{}': restricted to no scope at all.
    ADD COLUMN scopes              text[],
    ADD COLUMN expires_at          timestamptz,
    -- The replaced key of a rotation with a grace period: all three set, or none.
    ADD COLUMN previous_prefix     text        CHECK (previous_prefix ~ '^[0-9a-z]{8}$'),
    ADD COLUMN previous_digest     bytea       CHECK (octet_length(previous_digest) = 32),
    ADD COLUMN previous_expires_at timestamptz,
    ADD CONSTRAINT tower_api_keys_previous_check CHECK (
        (previous_prefix IS NULL) = (previous_digest IS NULL)
        AND (previous_digest IS NULL) = (previous_expires_at IS NULL)
    ),
    -- Lookups go by the previous prefix too. A prefix is reserved while it is any key's
    -- current or previous prefix: this keeps previous prefixes apart, and the store checks
    -- both columns, under an advisory lock on the prefix, before it writes one.
    ADD CONSTRAINT tower_api_keys_previous_prefix_key UNIQUE (previous_prefix);

-- Notifications name every digest a change concerns: the current and previous key's, before
-- and after, each once. A listener drops the grace key's cache entries with the current key's.
CREATE OR REPLACE FUNCTION tower_api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    digests bytea[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('tower_api_keys', '*');
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        digests := ARRAY[OLD.digest, OLD.previous_digest];
    ELSIF TG_OP = 'INSERT' THEN
        digests := ARRAY[NEW.digest, NEW.previous_digest];
    ELSE
        digests := ARRAY[OLD.digest, OLD.previous_digest, NEW.digest, NEW.previous_digest];
    END IF;
    PERFORM pg_notify('tower_api_keys', (
        SELECT string_agg(encode(d.digest, 'hex'), ' ' ORDER BY d.first)
        FROM (
            SELECT u.digest, min(u.n) AS first
            FROM unnest(digests) WITH ORDINALITY AS u(digest, n)
            WHERE u.digest IS NOT NULL
            GROUP BY u.digest
        ) AS d
    ));
    RETURN NULL;
END
$$;

-- Scopes, expiry and the grace key decide authentication too; the name and `last_used_at`
-- don't, and don't notify.
DROP TRIGGER tower_api_keys_notify_update ON tower_api_keys;

CREATE TRIGGER tower_api_keys_notify_update
    AFTER UPDATE ON tower_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.account_id, OLD.prefix, OLD.digest, OLD.status, OLD.scopes,
           OLD.expires_at, OLD.previous_prefix, OLD.previous_digest, OLD.previous_expires_at)
          IS DISTINCT FROM
          (NEW.id, NEW.account_id, NEW.prefix, NEW.digest, NEW.status, NEW.scopes,
           NEW.expires_at, NEW.previous_prefix, NEW.previous_digest, NEW.previous_expires_at))
    EXECUTE FUNCTION tower_api_keys_notify();
