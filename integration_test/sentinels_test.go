package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// holdAccount locks accounts row id in a transaction of its own until the test ends.
func holdAccount(t *testing.T, pool *pgxpool.Pool, id int64) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, "SELECT FROM accounts WHERE id = $1 FOR UPDATE", id); err != nil {
		t.Fatal(err)
	}
}

// TestOneSentinelPerCondition checks that each condition matches its one sentinel whichever package, or the
// caller's own statement inside txn.Run, raised it.
func TestOneSentinelPerCondition(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 3)
	ctx := context.Background()
	holdAccount(t, pool, 1)
	once := txn.WithMaxAttempts(1)

	lockBusy := map[string]error{
		"lock.Row NOWAIT": txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			return lock.Row(ctx, tx, accounts, pgcc.Key{int64(1)}, lock.WithWait(lock.NoWait))
		}, once),
		"lock.Load under txn.WithLockTimeout": txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			_, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{int64(1)}})
			return err
		}, once, txn.WithLockTimeout(50*time.Millisecond)),
		"the caller's own statement under txn.WithLockTimeout": txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
			return err
		}, once, txn.WithLockTimeout(50*time.Millisecond)),
		"repo.Table.Update under txn.WithLockTimeout": txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			a, err := accounts.Get(ctx, tx, pgcc.Key{int64(1)})
			if err != nil {
				return err
			}
			a.Balance++
			return accounts.Update(ctx, tx, &a)
		}, once, txn.WithLockTimeout(50*time.Millisecond)),
	}
	leases := lease.New(pool)
	if _, err := leases.TryAcquire(ctx, "job", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	_, lockBusy["lease held"] = leases.TryAcquire(ctx, "job", "b", time.Minute)
	for name, err := range lockBusy {
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Errorf("%s: %v (%T) does not match pgcc.ErrLockNotAvailable", name, err, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v matches context.DeadlineExceeded", name, err)
		}
	}

	notFound := map[string]error{}
	_, notFound["repo.Table.Get"] = accounts.Get(ctx, pool, pgcc.Key{int64(404)})
	_, notFound["repo.Table.Modify"] = accounts.Modify(ctx, pool, pgcc.Key{int64(404)}, func(context.Context, *Account) error { return nil })
	notFound["lock.Row"] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts, pgcc.Key{int64(404)})
	}, once)
	notFound["lock.Load"] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{int64(2)}, {int64(404)}})
		return err
	}, once)
	for name, err := range notFound {
		var nf *pgcc.NotFoundError
		if !errors.Is(err, pgcc.ErrNotFound) || !errors.As(err, &nf) || nf.Table != `"accounts"` {
			t.Errorf("%s: %v (%T) is not a *pgcc.NotFoundError on \"accounts\"", name, err, err)
		}
	}

	serialization := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
		return err
	}, once)
	if !errors.Is(serialization, pgcc.ErrSerialization) || !errors.Is(serialization, pgcc.ErrRetriesExhausted) {
		t.Errorf("a serialization failure in the caller's statement: %v", serialization)
	}
	deadlock := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "DO $$ BEGIN RAISE EXCEPTION 'cycle' USING ERRCODE = 'deadlock_detected'; END $$")
		return err
	}, once)
	if !errors.Is(deadlock, pgcc.ErrDeadlock) {
		t.Errorf("a deadlock in the caller's statement: %v", deadlock)
	}

	stale, err := accounts.Get(ctx, pool, pgcc.Key{int64(2)})
	if err != nil {
		t.Fatal(err)
	}
	fresh := stale
	fresh.Balance++
	if err := accounts.Update(ctx, pool, &fresh); err != nil {
		t.Fatal(err)
	}
	conflicts := map[string]error{"repo.Table.Update": accounts.Update(ctx, pool, &stale)}
	tag, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0, version = version + 1 WHERE id = 2 AND version = $1", stale.Version)
	if err != nil {
		t.Fatal(err)
	}
	conflicts["repo.Table.Check"] = accounts.Check(ctx, pool, tag, pgcc.Key{int64(2)}, stale.Version)
	for name, err := range conflicts {
		var ce *pgcc.ConflictError
		if !errors.Is(err, pgcc.ErrConflict) || !errors.As(err, &ce) || ce.Expected != stale.Version || ce.Actual != fresh.Version {
			t.Errorf("%s: %v is not the conflict expected (%d found %d)", name, err, stale.Version, fresh.Version)
		}
	}

	invalid := map[string]error{
		"txn.Run with a nil handle": txn.Run(ctx, nil, func(context.Context, pgx.Tx) error { return nil }),
		"repo.NewTable without a key field": func() error {
			_, err := repo.NewTable[struct{ Version int64 }]("t")
			return err
		}(),
		"lock.Row with a key of the wrong length": txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			return lock.Row(ctx, tx, accounts, pgcc.Key{int64(1), "x"})
		}, once),
		"lease.TryAcquire with a zero TTL": func() error {
			_, err := leases.TryAcquire(ctx, "job2", "a", 0)
			return err
		}(),
	}
	for name, err := range invalid {
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: %v does not match pgcc.ErrInvalidArgument", name, err)
		}
	}
}
