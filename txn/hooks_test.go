package txn_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// serializationFailure makes the server abort the current statement with SQLSTATE 40001, as a real conflict
// would.
func serializationFailure(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure'; END $$")
	return err
}

func TestAfterCommitRunsOnceForTheAttemptThatCommitted(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	var events []string
	attempt := 0
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		attempt++
		n := attempt
		if err := txn.AfterCommit(tx, func(context.Context) { events = append(events, "commit hook of attempt "+string(rune('0'+n))) }); err != nil {
			return err
		}
		if err := txn.AfterRollback(tx, func() { events = append(events, "rollback hook of attempt "+string(rune('0'+n))) }); err != nil {
			return err
		}
		// A savepoint that rolls back drops its commit hook and runs its rollback hook.
		_ = txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			_ = txn.AfterCommit(sp, func(context.Context) { events = append(events, "dropped savepoint hook") })
			_ = txn.AfterRollback(sp, func() { events = append(events, "savepoint rolled back") })
			return errors.New("roll the savepoint back")
		})
		// A savepoint that is released hands its commit hook to the transaction.
		if err := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			return txn.AfterCommit(sp, func(context.Context) { events = append(events, "released savepoint hook") })
		}); err != nil {
			return err
		}
		if attempt == 1 {
			return serializationFailure(ctx, tx)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"savepoint rolled back", "rollback hook of attempt 1",
		"savepoint rolled back", "commit hook of attempt 2", "released savepoint hook",
	}
	if !slices.Equal(events, want) {
		t.Errorf("events = %q, want %q", events, want)
	}
}

func TestAfterCommitPanicRunsTheOtherHooksAndKeepsTheCommit(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	ran := 0
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the hook's panic", r)
			}
		}()
		_ = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			_ = txn.AfterCommit(tx, func(context.Context) { panic("boom") })
			_ = txn.AfterCommit(tx, func(context.Context) { ran++ })
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = 7 WHERE id = 1")
			return err
		})
	}()
	if ran != 1 {
		t.Errorf("the hook after the panicking one ran %d times", ran)
	}
	if n := count(t, pool, "SELECT balance FROM accounts WHERE id = 1"); n != 7 {
		t.Errorf("balance = %d: the panic undid the commit", n)
	}
}

func TestHooksNeedATransactionFromRun(t *testing.T) {
	t.Parallel()
	_, pool := setup(t, 1)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := txn.AfterCommit(tx, func(context.Context) {}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("AfterCommit on a plain pgx.Tx: %v", err)
	}
	if err := txn.AfterRollback(tx, func() {}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("AfterRollback on a plain pgx.Tx: %v", err)
	}
	// A savepoint of a transaction Run did not begin can restore state, but cannot see the commit.
	err = txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
		if err := txn.AfterCommit(sp, func(context.Context) {}); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("AfterCommit in a savepoint of a plain pgx.Tx: %v", err)
		}
		return txn.AfterRollback(sp, func() {})
	})
	if err != nil {
		t.Fatal(err)
	}
}
