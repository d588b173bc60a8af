package txn_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail/pgfailtest"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// BenchmarkOutage measures how txn.Run behaves while the server cannot be reached (connections refused, as
// during a restart), through a fault proxy that stays down. Run it with a fixed count, since each iteration
// lasts seconds:
//
//	go test -run '^$' -bench Outage -benchtime 10x ./txn/
//
// "defaults" runs one Run with the default policy per iteration: ns/op is how long it keeps trying before it
// gives up with ErrRetriesExhausted (ErrConnectionLost), the outage the defaults absorb on average, and
// attempts/op how many connects it tries meanwhile. "unlimited-16-callers" runs 16 callers retrying with
// UnlimitedAttempts through 5 s of outage per iteration: attempts/s is the load all of them put on the server
// (connects per second) while it is down, the figure that must stay far from a spin.
func BenchmarkOutage(b *testing.B) {
	db := pgtest.NewDB(b)
	proxy, dsn := pgfailtest.New(b, db.DSN)
	through := &pgtest.DB{Name: db.Name, DSN: dsn}
	pool := through.Pool(b, func(c *pgxpool.Config) { c.MaxConns = 16 })
	ctx := context.Background()
	proxy.Down(false)
	defer proxy.Up()
	noop := func(context.Context, pgx.Tx) error { return nil }

	b.Run("defaults", func(b *testing.B) {
		var attempts int64
		for b.Loop() {
			err := txn.Run(ctx, pool, noop)
			var exhausted *pgcc.RetriesExhaustedError
			if !errors.As(err, &exhausted) || !errors.Is(err, pgcc.ErrConnectionLost) {
				b.Fatalf("err = %v, want retries exhausted on a lost connection", err)
			}
			attempts += int64(exhausted.Attempts)
		}
		b.ReportMetric(float64(attempts)/float64(b.N), "attempts/op")
	})
	b.Run("unlimited-16-callers", func(b *testing.B) {
		const callers, outage = 16, 5 * time.Second
		var attempts atomic.Int64
		var elapsed time.Duration
		for b.Loop() {
			start := time.Now()
			outageCtx, cancel := context.WithTimeout(ctx, outage)
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					_ = txn.Run(outageCtx, pool, noop, txn.WithMaxAttempts(txn.UnlimitedAttempts),
						txn.OnRetry(func(int, error, time.Duration) { attempts.Add(1) }))
					attempts.Add(1) // the last attempt, cut short by the deadline
				})
			}
			wg.Wait()
			cancel()
			elapsed += time.Since(start)
		}
		b.ReportMetric(float64(attempts.Load())/elapsed.Seconds(), "attempts/s")
	})
}
