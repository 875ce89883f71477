-- API keys, one row per key. Only a keyed digest of each key is kept, never the key itself.
CREATE TABLE tower_api_keys (
    id              TEXT    NOT NULL PRIMARY KEY,  -- UUID, hyphenated
    account_id      TEXT    NOT NULL CHECK (length(account_id) BETWEEN 1 AND 64),
    -- Changes on rotation. Unique across all keys: lookups go by prefix.
    prefix          TEXT    NOT NULL CONSTRAINT tower_api_keys_prefix_key UNIQUE
                            CHECK (length(prefix) = 8),
    digest          BLOB    NOT NULL CHECK (length(digest) = 32),
    status          TEXT    NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at_us   INTEGER NOT NULL,  -- microseconds since the Unix epoch
    last_used_at_us INTEGER            -- likewise; NULL until the key is used
) STRICT;

CREATE INDEX tower_api_keys_account_idx ON tower_api_keys (account_id, created_at_us);
