-- Where the time of one PostgreSQL last-used flush of 100,000 keys goes: the migrations in a
-- schema of its own, 100,000 keys (unique hex prefixes, as bulk-loaded pages: full), then the
-- statement `PostgresStore::record_last_used` runs, under EXPLAIN (ANALYZE, BUFFERS, WAL), and
-- how many of its row updates were HOT (no index entries written). Drops the schema at the
-- end. Run by hand: psql "$DATABASE_URL" -f scripts/last_used_plan.sql
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS tak_last_used_plan CASCADE;
CREATE SCHEMA tak_last_used_plan;
SET search_path = tak_last_used_plan;
\ir ../migrations/postgres/0001_tower_api_keys.sql
\ir ../migrations/postgres/0002_no_notify_on_insert.sql
\ir ../migrations/postgres/0003_key_policy.sql

INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at)
SELECT gen_random_uuid(), 'acct' || (i % 1000), lpad(to_hex(i), 8, '0'),
       decode(md5(i::text) || md5(i::text || 'x'), 'hex'), 'active', now()
FROM generate_series(1, 100000) AS i;
VACUUM ANALYZE tower_api_keys;
-- One use per key, one second after creation.
CREATE TEMP TABLE uses_in AS SELECT id, prefix, created_at + interval '1 s' AS at FROM tower_api_keys;

\timing on
-- The statement of `PostgresStore::record_last_used`, with the arrays built from `uses_in`.
EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF)
WITH uses AS (
  SELECT id, prefix, max(at) AS at
  FROM unnest((SELECT array_agg(id) FROM uses_in), (SELECT array_agg(prefix) FROM uses_in),
              (SELECT array_agg(at) FROM uses_in)) AS u(id, prefix, at)
  GROUP BY id, prefix
), locked AS (
  SELECT k.id FROM tower_api_keys k JOIN uses u ON k.id = u.id AND k.prefix = u.prefix
  ORDER BY k.id FOR UPDATE OF k
)
UPDATE tower_api_keys k SET last_used_at = u.at
FROM uses u
WHERE k.id = u.id AND k.prefix = u.prefix AND k.id IN (SELECT id FROM locked)
  AND (k.last_used_at IS NULL OR k.last_used_at < u.at);
\timing off

SELECT pg_sleep(1);  -- the statistics reach pg_stat_user_tables within a second
SELECT n_tup_upd AS rows_updated, n_tup_hot_upd AS hot_updates
FROM pg_stat_user_tables WHERE schemaname = 'tak_last_used_plan' AND relname = 'tower_api_keys';

DROP SCHEMA tak_last_used_plan CASCADE;
