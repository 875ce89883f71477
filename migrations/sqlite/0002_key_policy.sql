-- Key policy: a name, scopes, an expiry, and the previous key of a rotation with a grace
-- period. Existing keys keep what they had: no name, unrestricted, never expiring, no
-- previous key (every new column is NULL).
--
-- `scopes` holds the key's scopes joined by single spaces (a scope can't contain one): NULL
-- is an unrestricted key, '' a key restricted to no scope at all.
ALTER TABLE tower_api_keys ADD COLUMN name TEXT
    CHECK (length(name) BETWEEN 1 AND 64);
ALTER TABLE tower_api_keys ADD COLUMN scopes TEXT;
ALTER TABLE tower_api_keys ADD COLUMN expires_at_us INTEGER;  -- microseconds since the epoch
-- The replaced key of a rotation with a grace period: all three set, or none.
ALTER TABLE tower_api_keys ADD COLUMN previous_prefix TEXT
    CHECK (length(previous_prefix) = 8);
ALTER TABLE tower_api_keys ADD COLUMN previous_digest BLOB
    CHECK (length(previous_digest) = 32);
ALTER TABLE tower_api_keys ADD COLUMN previous_expires_at_us INTEGER
    CHECK ((previous_prefix IS NULL) = (previous_digest IS NULL)
       AND (previous_digest IS NULL) = (previous_expires_at_us IS NULL));

-- Lookups go by the previous prefix too. A prefix is reserved while it is any key's current
-- or previous prefix: this index keeps previous prefixes apart, and the store checks both
-- columns before it writes one.
CREATE UNIQUE INDEX tower_api_keys_previous_prefix_key ON tower_api_keys (previous_prefix);
