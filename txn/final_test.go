package txn_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/txn"
)

// TestFinalRoundTrips: a final write travels with COMMIT, and with BEGIN too when it is all fn sends.
func TestFinalRoundTrips(t *testing.T) {
	t.Parallel()
	db, pool, p := proxiedOne(t)
	readThenFinal := func(ctx context.Context, tx pgx.Tx) error {
		var b int64
		if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", 1).Scan(&b); err != nil {
			return err
		}
		return txn.Final(tx, "UPDATE accounts SET balance = $2 WHERE id = $1", 1, b+1)
	}
	if got := flights(t, pool, p, readThenFinal); got != 2 {
		t.Errorf("read, then a final write: %d round trips, want 2", got)
	}
	onlyFinal := func(ctx context.Context, tx pgx.Tx) error {
		return txn.Final(tx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 2)
	}
	if got := flights(t, pool, p, onlyFinal); got != 1 {
		t.Errorf("a final write alone: %d round trips, want 1", got)
	}
	if b := balance(t, db); b != 102 {
		t.Errorf("balance %d, want 102", b)
	}
	var b2 int
	if err := pool.QueryRow(context.Background(), "SELECT balance FROM accounts WHERE id = 2").Scan(&b2); err != nil || b2 != 102 {
		t.Errorf("balance of 2: %d (%v), want 102", b2, err)
	}
}

// TestFinalWriteFails: a final write the server refuses makes it skip COMMIT: Run returns the error with its
// table, constraint and key, nothing of the transaction is committed, and the pool gets its connection back
// outside any transaction.
func TestFinalWriteFails(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"lazy", "after statements"} {
		db, pool := setup(t, 2, func(c *pgxpool.Config) { c.MaxConns = 1 })
		ctx := context.Background()
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if name == "after statements" {
				if err := increment(ctx, tx); err != nil {
					return err
				}
			}
			if err := txn.Final(tx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1); err != nil {
				return err
			}
			return txn.Final(tx, "INSERT INTO accounts VALUES ($1, 0)", 2)
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.UniqueViolation || pgErr.TableName != "accounts" ||
			!strings.Contains(pgErr.Detail, "(id)=(2)") {
			t.Fatalf("%s: err = %v, want the unique violation of accounts with its key", name, err)
		}
		if errors.Is(err, pgcc.ErrCommitUnknown) {
			t.Errorf("%s: a refused final write reported as commit-unknown: %v", name, err)
		}
		if b := balance(t, db); b != 100 {
			t.Errorf("%s: balance %d, want 100: part of the transaction committed", name, b)
		}
		var status string
		if err := pool.QueryRow(ctx, "SELECT 'ok'").Scan(&status); err != nil {
			t.Errorf("%s: the pool's connection is unusable after the failed final write: %v", name, err)
		}
	}
}

// TestFinalConnectionLost: the connection fails once the flight carrying the final write and COMMIT was
// sent (the server runs both, the answer never comes back). Run reports commit-unknown, never success or a
// certain failure, and does not retry.
func TestFinalConnectionLost(t *testing.T) {
	t.Parallel()
	db, pool, p := proxiedOne(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec })
	p.OnQuery(faultnet.IsCommit, faultnet.LoseReply, faultnet.Times(1))
	calls := 0
	err := txn.Run(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) error {
		calls++
		if err := increment(ctx, tx); err != nil {
			return err
		}
		return txn.Final(tx, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1)
	}, fastRetry)
	var cu *pgcc.CommitUnknownError
	if !errors.As(err, &cu) || calls != 1 {
		t.Fatalf("err = %v after %d calls, want one *pgcc.CommitUnknownError", err, calls)
	}
	if b := balance(t, db); b != 102 {
		t.Errorf("balance %d, want 102 (the server committed; only the answer was lost)", b)
	}
}

// TestFinalOutsideRun: Final refuses a transaction Run did not begin, and a savepoint.
func TestFinalOutsideRun(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := txn.Final(tx, "SELECT 1"); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Final on a plain pgx.Tx: %v, want ErrInvalidArgument", err)
	}
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error { return txn.Final(sp, "SELECT 1") })
	})
	if !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Final in a savepoint: %v, want ErrInvalidArgument", err)
	}
}

// TestLast: Last wraps only the transaction Run began; the handle it returns is that transaction for
// everything else (hooks, Final, nested Run), and statements sent through it are sent at once.
func TestLast(t *testing.T) {
	t.Parallel()
	db, pool := setup(t, 2)
	ctx := context.Background()
	plain, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plain.Rollback(ctx) }()
	if got := txn.Last(plain); got != plain {
		t.Errorf("Last of a transaction Run did not begin: %T, want it unchanged", got)
	}
	rolledBack := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		last := txn.Last(tx)
		if last == tx {
			t.Error("Last of Run's transaction returned it unchanged")
		}
		if err := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			if got := txn.Last(sp); got != sp {
				t.Errorf("Last of a savepoint: %T, want it unchanged", got)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := txn.AfterRollback(last, func() { rolledBack++ }); err != nil {
			return err
		}
		if _, err := last.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"); err != nil {
			return err
		}
		if err := txn.Run(ctx, last, func(ctx context.Context, sp pgx.Tx) error { return increment(ctx, sp) }); err != nil {
			return err
		}
		return txn.Final(last, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if b := balance(t, db); b != 103 || rolledBack != 0 {
		t.Errorf("balance %d, %d rollback hooks; want 103, 0", b, rolledBack)
	}
}
