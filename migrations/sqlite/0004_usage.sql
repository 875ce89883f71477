-- Requests counted per key per UTC hour: accepted, rate limited, refused. `hour` is the hour's
-- index since the Unix epoch. Counts are signed sums of what each flush adds (a scope refusal
-- moves a request from accepted to refused, possibly across two flushes); a sum below zero
-- reads as zero.
--
-- No foreign key to tower_api_keys: a deleted key keeps its counts (an account's totals
-- include them) until they are pruned by hour.
CREATE TABLE tower_api_keys_usage (
    account_id   TEXT    NOT NULL,
    hour         INTEGER NOT NULL CHECK (hour BETWEEN 0 AND 4294967295),
    key_id       TEXT    NOT NULL,  -- UUID, hyphenated (sorts as the UUID's bytes)
    accepted     INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    refused      INTEGER NOT NULL DEFAULT 0,
    -- An account's hours in order, its keys within each: the account's range query reads a
    -- slice of it, and a key's is the same slice filtered on the index itself.
    PRIMARY KEY (account_id, hour, key_id)
) STRICT, WITHOUT ROWID;

-- Pruning deletes whole hours, oldest first.
CREATE INDEX tower_api_keys_usage_hour_idx ON tower_api_keys_usage (hour);
