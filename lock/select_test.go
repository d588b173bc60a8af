package lock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
)

func ids(items []item) string {
	out := make([]int32, len(items))
	for i, it := range items {
		out[i] = it.ID
	}
	return fmt.Sprint(out)
}

// TestSelectWaitsForPredicateRows: Select locks the rows a predicate chooses, in the order asked, at most
// Limit, and waits for a row another transaction holds (Django's filter().select_for_update()); NoWait fails
// at once, SkipLocked leaves the row out.
func TestSelectWaitsForPredicateRows(t *testing.T) {
	t.Parallel()
	pool := setup(t, 6)
	ctx := context.Background()
	holder, _ := holdRow(t, pool, 2)

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	type result struct {
		rows []item
		err  error
	}
	done := make(chan result, 1)
	go func() {
		rows, err := lock.Select(ctx, tx, itemsTable(), lock.Where("id <= $1", 4), lock.OrderBy("id DESC"), lock.Limit(3))
		done <- result{rows, err}
	}()
	awaitWaiting(t, pool, conn.Conn().PgConn().PID(), func() { <-done })
	if _, err := holder.Exec(ctx, "UPDATE items SET n = 7 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if ids(r.rows) != "[4 3 2]" || r.rows[2].N != 7 {
		t.Errorf("Select = %v, want rows 4, 3, 2 with row 2's committed n = 7", r.rows)
	}

	// Another transaction: NoWait fails on the rows tx holds, SkipLocked leaves them out.
	inTx(t, pool, func(other pgx.Tx) {
		_, err := lock.Select(ctx, other, itemsTable(), lock.Where("id <= $1", 4), lock.WithWait(lock.NoWait))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Errorf("NoWait = %v, want ErrLockNotAvailable", err)
		}
	})
	inTx(t, pool, func(other pgx.Tx) {
		rows, err := lock.Select(ctx, other, itemsTable(), lock.WithWait(lock.SkipLocked), lock.WithStrength(lock.ForShare))
		if err != nil || ids(rows) != "[1 5 6]" {
			t.Errorf("SkipLocked = %v, %v; want rows 1, 5, 6", rows, err)
		}
	})
}

// TestSelectRecheckLeavesOutChangedRows: a row that no longer matches once its holder committed is left out
// (PostgreSQL re-evaluates the predicate on the version it locks), and the limit is filled from the next
// matching rows (locking happens below the LIMIT), as the documentation of Select says.
func TestSelectRecheckLeavesOutChangedRows(t *testing.T) {
	t.Parallel()
	pool := setup(t, 3)
	ctx := context.Background()
	holder, _ := holdRow(t, pool, 1)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	done := make(chan []item, 1)
	go func() {
		rows, err := lock.Select(ctx, tx, itemsTable(), lock.Where("n = 0"), lock.Limit(2))
		if err != nil {
			t.Error(err)
		}
		done <- rows
	}()
	awaitWaiting(t, pool, conn.Conn().PgConn().PID(), func() { <-done })
	if _, err := holder.Exec(ctx, "UPDATE items SET n = 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if rows := <-done; ids(rows) != "[2 3]" {
		t.Errorf("Select = %v, want rows 2 and 3 (row 1 no longer matches)", rows)
	}
}

// TestSelectTimeoutWithDiagnostics: a Select that waits past its timeout names the holder of the rows its
// predicate chose.
func TestSelectTimeoutWithDiagnostics(t *testing.T) {
	t.Parallel()
	pool := setup(t, 3)
	ctx := context.Background()
	_, holderPID := holdRow(t, pool, 3)
	inTx(t, pool, func(tx pgx.Tx) {
		_, err := lock.Select(ctx, tx, itemsTable(), lock.Where("id >= $1", 2), lock.WithTimeout(100*time.Millisecond), lock.WithDiagnostics(pool))
		le := lockError(t, err)
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Errorf("err = %v, want ErrLockNotAvailable", err)
		}
		checkBlockers(t, le, holderPID)
	})
}
