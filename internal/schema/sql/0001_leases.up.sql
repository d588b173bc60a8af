-- Leases: named, time-bounded ownership with fencing tokens (package lock).
-- Expiry is always computed from the database clock (now()/clock_timestamp()).
CREATE TABLE IF NOT EXISTS pgcc.leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    token       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    CONSTRAINT leases_name_not_empty CHECK (name <> ''),
    CONSTRAINT leases_holder_not_empty CHECK (holder <> ''),
    CONSTRAINT leases_token_positive CHECK (token > 0)
);
