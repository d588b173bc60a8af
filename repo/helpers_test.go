package repo_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Account is the row type of most tests.
type Account struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

const accountsDDL = `CREATE TABLE accounts (
	id bigint PRIMARY KEY,
	owner text NOT NULL,
	balance bigint NOT NULL,
	version bigint NOT NULL)`

// setup returns a pool on a fresh database holding the accounts table with n rows (id i, owner "owner-i",
// balance 100, version 1) and its description.
func setup(t *testing.T, n int, configure ...func(*pgxpool.Config)) (*pgtest.DB, *pgxpool.Pool, *repo.Table[Account]) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool := db.Pool(t, configure...)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, accountsDDL); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO accounts SELECT g, 'owner-' || g, 100, 1 FROM generate_series(1, $1) g", n); err != nil {
		t.Fatal(err)
	}
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		t.Fatal(err)
	}
	return db, pool, accounts
}

func mustGet[T any](t *testing.T, tbl *repo.Table[T], db pgcc.DBTX, key ...any) T {
	t.Helper()
	row, err := tbl.Get(context.Background(), db, pgcc.Key(key))
	if err != nil {
		t.Fatalf("Get(%v): %v", key, err)
	}
	return row
}

func asConflict(t *testing.T, err error) *pgcc.ConflictError {
	t.Helper()
	var ce *pgcc.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *pgcc.ConflictError", err, err)
	}
	if !errors.Is(err, pgcc.ErrConflict) {
		t.Fatalf("errors.Is(%v, ErrConflict) is false", err)
	}
	return ce
}

// wantConflict checks every field of a conflict except KeyColumns, which is checked where it matters.
func wantConflict(t *testing.T, err error, want pgcc.ConflictError) {
	t.Helper()
	ce := asConflict(t, err)
	if ce.Table != want.Table || ce.Op != want.Op || ce.Expected != want.Expected || ce.Actual != want.Actual || ce.Deleted != want.Deleted || !sameKey(ce.Key, want.Key) {
		t.Fatalf("conflict = %+v, want %+v", *ce, want)
	}
}

func sameKey(a, b pgcc.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func queryInt(t *testing.T, q pgcc.DBTX, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// awaitLockWait returns once n sessions of the test's database wait for a lock: the deterministic way to know
// that a statement has reached the row another transaction holds.
func awaitLockWait(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		waiting := queryInt(t, pool, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
		if waiting >= int64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session waits for a lock after 30 s (want %d)", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// onlyDBTX hides every method of a handle but Exec, Query and QueryRow, as sqlc's DBTX does.
type onlyDBTX struct{ pgcc.DBTX }

// beginTx starts a transaction for a test's other session and rolls it back at cleanup if still open.
func beginTx(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}
