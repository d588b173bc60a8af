package lease_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a pool on a fresh database (migrated: pgcc.leases exists) with a table items of n rows.
func setup(t *testing.T, n int) *pgxpool.Pool {
	t.Helper()
	pool := pgtest.NewDB(t).Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO items SELECT g FROM generate_series(1, $1) g", n); err != nil {
		t.Fatal(err)
	}
	return pool
}

// inTx runs fn in a transaction on its own connection and rolls back.
func inTx(t *testing.T, pool *pgxpool.Pool, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	fn(tx)
}

func lockError(t *testing.T, err error) *pgcc.LockError {
	t.Helper()
	var le *pgcc.LockError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T) is not a *pgcc.LockError", err, err)
	}
	return le
}

func queryInt(t *testing.T, q pgcc.DBTX, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
