package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

// TestShorterLockTimeoutWins: inside txn.Run with txn.WithLockTimeout(300ms), a lock wait under a 20s
// deadline ends after the transaction's 300ms, as lock-not-available and not as the deadline: the deadline's
// lock_timeout is the least of the two, computed by the server.
func TestShorterLockTimeoutWins(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holdRow(t, pool, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, itemsTable(), pgcc.Key{1})
	}, txn.WithLockTimeout(300*time.Millisecond), txn.WithMaxAttempts(1))
	elapsed := time.Since(start)
	if !errors.Is(err, pgcc.ErrLockNotAvailable) || pgCode(err) != pgerrcode.LockNotAvailable {
		t.Fatalf("err = %v, want ErrLockNotAvailable", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the transaction's lock timeout reported as the deadline: %v", err)
	}
	if elapsed < 300*time.Millisecond || elapsed > 10*time.Second {
		t.Errorf("waited %v, want about 300ms (the transaction's lock_timeout), not the 20s deadline", elapsed)
	}
	// And the setting comes back after the statement: a second lock in the same transaction still has 300ms.
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{42}); !errors.Is(err, pgcc.ErrNotFound) {
			return err
		}
		var setting string
		if err := tx.QueryRow(ctx, "SHOW lock_timeout").Scan(&setting); err != nil {
			return err
		}
		if setting != "300ms" {
			t.Errorf("lock_timeout after a bounded lock statement = %q, want the transaction's 300ms", setting)
		}
		return nil
	}, txn.WithLockTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeadlineShorterThanLockTimeout: a deadline sooner than the transaction's lock_timeout ends the wait by
// the deadline, reported as both the deadline and lock-not-available.
func TestDeadlineShorterThanLockTimeout(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holdRow(t, pool, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	var lockErr error
	_ = txn.Run(context.Background(), pool, func(_ context.Context, tx pgx.Tx) error {
		lockErr = lock.Row(ctx, tx, itemsTable(), pgcc.Key{1})
		return lockErr
	}, txn.WithLockTimeout(30*time.Second), txn.WithMaxAttempts(1))
	elapsed := time.Since(start)
	if !errors.Is(lockErr, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", lockErr)
	}
	if elapsed > 400*time.Millisecond+5*time.Second {
		t.Errorf("waited %v, want about 400ms", elapsed)
	}
	// Normally the server's lock_timeout ends the wait, and the error is lock-not-available too; on a machine
	// too loaded for its answer to arrive within lockwait.DeadlineGrace after the deadline, the connection is
	// closed instead and the error carries the read's timeout.
	if pgCode(lockErr) != "" && (pgCode(lockErr) != pgerrcode.LockNotAvailable || !errors.Is(lockErr, pgcc.ErrLockNotAvailable)) {
		t.Errorf("a deadline ended by the server's lock_timeout should match ErrLockNotAvailable too: %v", lockErr)
	}
	t.Logf("%v after %v", lockErr, elapsed)
}

// TestNoWaitUnderDeadlineIsNotTheDeadline: a NOWAIT refusal after a millisecond with 30s left is
// lock-not-available, never the deadline (an HTTP mapping answers 423, not 504).
func TestNoWaitUnderDeadlineIsNotTheDeadline(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holdRow(t, pool, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, opts := range map[string][]lock.Option{
		"NoWait":                  {lock.WithWait(lock.NoWait)},
		"NoWait with diagnostics": {lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool)},
		"NoWait with a timeout":   {lock.WithWait(lock.NoWait), lock.WithTimeout(time.Minute)},
	} {
		inTx(t, pool, func(tx pgx.Tx) {
			err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, opts...)
			if !errors.Is(err, pgcc.ErrLockNotAvailable) {
				t.Fatalf("%s: err = %v, want ErrLockNotAvailable", name, err)
			}
			if errors.Is(err, context.DeadlineExceeded) || lockError(t, err).Cause != nil {
				t.Errorf("%s: a NOWAIT refusal reported as the deadline: %v", name, err)
			}
		})
	}
	// Advisory NOWAIT under a deadline: the same.
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	key := lock.StringKey("pgcc-test", "nowait")
	if err := lock.XactLock(ctx, holder, key); err != nil {
		t.Fatal(err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		err := lock.XactLock(ctx, tx, key, lock.WithWait(lock.NoWait))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("advisory NOWAIT = %v", err)
		}
	})
}

// TestExplicitTimeoutReplacesSessionSetting: WithTimeout replaces, for its statement, the lock_timeout in
// force, shorter or longer.
func TestExplicitTimeoutReplacesSessionSetting(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	holdRow(t, pool, 1)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '50ms'"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(400*time.Millisecond))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Fatalf("err = %v", err)
		}
		if elapsed := time.Since(start); elapsed < 400*time.Millisecond {
			t.Errorf("waited %v: WithTimeout(400ms) should replace the session's 50ms", elapsed)
		}
	})
}

// TestFarDeadlines: a deadline further than lock_timeout's range (about 24.8 days) is not sent as one (no
// SQLSTATE 22023), and the lock works; an explicit timeout that long is refused before anything is sent.
func TestFarDeadlines(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	holdRow(t, pool, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*24*time.Hour)
	defer cancel()
	inTx(t, pool, func(tx pgx.Tx) {
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}); err != nil {
			t.Errorf("lock under a 30-day deadline: %v", err)
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.NoWait)); !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Errorf("NOWAIT under a 30-day deadline: %v", err)
		}
	})
	inTx(t, pool, func(tx pgx.Tx) {
		err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}, lock.WithTimeout(25*24*time.Hour))
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("WithTimeout(25 days) = %v, want ErrInvalidArgument", err)
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{2}, lock.WithTimeout(lock.MaxTimeout)); err != nil {
			t.Errorf("WithTimeout(MaxTimeout) = %v", err)
		}
	})
}
