-- Idempotency keys (package txn, txn.WithIdempotencyKey): one row per key whose transaction committed,
-- inserted by that transaction itself, so the row exists exactly when the transaction's work does.
--   key        the caller's key; the primary key makes a second transaction with the same key wait for the
--              first and then fail, so the keyed work is never applied twice.
--   applied_at when the transaction that applied the key began (now(), the database clock).
--   expires_at applied_at plus the retention asked for; txn.PurgeIdempotencyKeys deletes rows past it.
--   attempt    a random number naming the attempt that wrote the row: a caller that lost the reply to its
--              COMMIT finds out from it whether the committed row is its own.
CREATE TABLE IF NOT EXISTS pgcc.idempotency_keys (
    key        text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    attempt    bigint      NOT NULL,
    CONSTRAINT idempotency_keys_key_not_empty CHECK (key <> '')
);

CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON pgcc.idempotency_keys (expires_at);
