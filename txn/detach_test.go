package txn_test

import (
	"context"
	"errors"
	"sync/atomic"
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
		// The context ends once the network has hung, not at a deadline set before Run: on a loaded machine
		// connecting and the first statement alone can take longer than any deadline short enough to test.
		const deadline = 300 * time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		var endedAt atomic.Int64
		end := func() { endedAt.Store(time.Now().UnixNano()); cancel() }
		stopLag := stalls()
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if err := increment(ctx, tx); err != nil {
				return err
			}
			proxy.Hang(faultnet.Both)
			if cancelled {
				end() // the caller gives up
			} else {
				time.AfterFunc(deadline, end) // the caller's timer fires while fn waits
				<-ctx.Done()
			}
			return boom
		})
		elapsed := time.Since(time.Unix(0, endedAt.Load()))
		lag := stopLag()
		cancel()
		proxy.Resume()
		if !errors.Is(err, boom) {
			t.Errorf("cancelled %v: err = %v, want fn's error", cancelled, err)
		}
		if endedAt.Load() != 0 && elapsed > 100*time.Millisecond+2*lag {
			t.Errorf("cancelled %v: Run returned %v after its context ended (the process stalled %v at worst), want at most 100 ms", cancelled, elapsed, lag)
		}
	}
}

// stalls starts measuring how late a goroutine sleeping 5 ms at a time wakes up, and returns the function
// that stops it and returns the worst lateness: a stall of the whole process, which a loaded machine causes
// and which is not Run's lateness.
func stalls() (stop func() time.Duration) {
	done, worst := make(chan struct{}), make(chan time.Duration)
	go func() {
		var w time.Duration
		for {
			select {
			case <-done:
				worst <- w
				return
			default:
			}
			start := time.Now()
			time.Sleep(5 * time.Millisecond)
			w = max(w, time.Since(start)-5*time.Millisecond)
		}
	}()
	return func() time.Duration { close(done); return <-worst }
}
