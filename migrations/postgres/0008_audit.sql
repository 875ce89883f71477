-- The audit trail: one row per change made to a key (or refused), written in the same
-- transaction (or statement) as the change. `id` numbers the entries from one sequence that
-- every process draws from, so it orders one trail for all of them and is never handed out
-- again, even after pruning. `key_id` and `prefix` name the key (its prefix after the change;
-- a deleted key's last one), both NULL for a refused create; `changes` is the policy set, a
-- JSON object in compact form, kept as written.
--
-- No foreign key to tower_api_keys: entries outlive the keys they name, until they are
-- pruned by time. No trigger: entries notify nothing (the change they record does).
CREATE TABLE tower_api_keys_audit (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL,
    account_id text        NOT NULL,
    key_id     uuid,
    prefix     text,
    action     text        NOT NULL
               CHECK (action IN ('create', 'update', 'rotate', 'revoke', 'reactivate', 'delete')),
    actor      text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('done', 'refused')),
    changes    text        NOT NULL,
    CONSTRAINT tower_api_keys_audit_key_check CHECK ((key_id IS NULL) = (prefix IS NULL))
);

-- An account's trail, newest first, a page at a time.
CREATE INDEX tower_api_keys_audit_account_idx ON tower_api_keys_audit (account_id, id DESC);
-- Pruning deletes the oldest entries.
CREATE INDEX tower_api_keys_audit_at_idx ON tower_api_keys_audit (at);
