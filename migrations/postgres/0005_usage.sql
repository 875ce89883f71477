-- Requests counted per key per UTC hour: accepted, rate limited, refused. `hour` is the hour's
-- index since the Unix epoch (`to_timestamp(hour * 3600)` is its start), as in SQLite. Counts
-- are signed sums of what each flush adds (a scope refusal moves a request from accepted to
-- refused, possibly across two flushes); a sum below zero reads as zero.
--
-- No foreign key to tower_api_keys: a deleted key keeps its counts (an account's totals
-- include them) until they are pruned by hour. No trigger: counts don't affect
-- authentication, and their writes notify nothing.
CREATE TABLE tower_api_keys_usage (
    account_id   text   NOT NULL,
    hour         bigint NOT NULL CHECK (hour BETWEEN 0 AND 4294967295),
    key_id       uuid   NOT NULL,
    accepted     bigint NOT NULL DEFAULT 0,
    rate_limited bigint NOT NULL DEFAULT 0,
    refused      bigint NOT NULL DEFAULT 0,
    -- An account's hours in order, its keys within each: the account's range query reads a
    -- slice of it, and a key's is the same slice filtered on the index itself.
    CONSTRAINT tower_api_keys_usage_pkey PRIMARY KEY (account_id, hour, key_id)
);

-- Pruning deletes whole hours, oldest first.
CREATE INDEX tower_api_keys_usage_hour_idx ON tower_api_keys_usage (hour);
