DROP TABLE IF EXISTS pgcc.idempotency_keys;
