-- API keys, one row per key. Only a keyed digest of each key is kept, never the key itself.
CREATE TABLE tower_api_keys (
    id           uuid        PRIMARY KEY,
    account_id   text        NOT NULL CHECK (account_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    -- Changes on rotation. Unique across all keys: lookups go by prefix.
    prefix       text        NOT NULL CHECK (prefix ~ '^[0-9a-z]{8}$'),
    digest       bytea       NOT NULL CHECK (octet_length(digest) = 32),
    status       text        NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    -- Orders keys created in the same microsecond by insertion.
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT tower_api_keys_prefix_key UNIQUE (prefix)
);

CREATE INDEX tower_api_keys_account_idx ON tower_api_keys (account_id, created_at, seq);

-- Every change that can affect authentication notifies channel `tower_api_keys` with the hex
-- digest(s) of the key(s) concerned, from inside the changing transaction: PostgreSQL
-- delivers it exactly when (and only if) the change commits. Listening processes drop those
-- keys from their caches. This covers changes made by hand in SQL too; `last_used_at`
-- updates don't notify.
CREATE FUNCTION tower_api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('tower_api_keys', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tower_api_keys', encode(OLD.digest, 'hex'));
    ELSIF TG_OP = 'INSERT' OR OLD.digest = NEW.digest THEN
        PERFORM pg_notify('tower_api_keys', encode(NEW.digest, 'hex'));
    ELSE
        PERFORM pg_notify(
            'tower_api_keys',
            encode(OLD.digest, 'hex') || ' ' || encode(NEW.digest, 'hex')
        );
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tower_api_keys_notify_insert_delete
    AFTER INSERT OR DELETE ON tower_api_keys
    FOR EACH ROW EXECUTE FUNCTION tower_api_keys_notify();

CREATE TRIGGER tower_api_keys_notify_update
    AFTER UPDATE ON tower_api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.account_id, OLD.prefix, OLD.digest, OLD.status)
          IS DISTINCT FROM (NEW.id, NEW.account_id, NEW.prefix, NEW.digest, NEW.status))
    EXECUTE FUNCTION tower_api_keys_notify();

CREATE TRIGGER tower_api_keys_notify_truncate
    AFTER TRUNCATE ON tower_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tower_api_keys_notify();
