package txn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// TestRollbackOnHungConnectionKeepsTheDeadline: fn fails after the network stopped answering, so the
// ROLLBACK that follows gets no reply. Run must still return within its context's deadline plus a small grace
// (before the fix it waited for the ROLLBACK up to 5 s, detached from the caller's context: the fault suite
// saw 0.8 s past a 1 s deadline), and return fn's error; the pool gets its connection back once pgx has
// closed it.
func TestRollbackOnHungConnectionKeepsTheDeadline(t *testing.T) {
	t.Parallel()
	db, _ := setup(t, 1)
	proxy, dsn := faultnet.ForDSN(t, db.DSN)
	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t)
	boom := errors.New("boom")
	for _, cancelled := range []bool{false, true} {
		const deadline = 300 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		start := time.Now()
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if err := increment(ctx, tx); err != nil {
				return err
			}
			proxy.Hang(faultnet.Both)
			if cancelled {
				cancel() // the caller gives up before its deadline
			} else {
				<-ctx.Done()
			}
			return boom
		})
		elapsed := time.Since(start)
		cancel()
		proxy.Resume()
		if !errors.Is(err, boom) {
			t.Errorf("cancelled %v: err = %v, want fn's error", cancelled, err)
		}
		if elapsed > deadline+100*time.Millisecond {
			t.Errorf("cancelled %v: Run returned %v after it began, past its %v deadline plus 100 ms", cancelled, elapsed, deadline)
		}
	}
}
