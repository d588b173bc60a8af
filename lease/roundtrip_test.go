package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
)

// TestAcquireOneRoundTripPerAttempt counts, through a proxy, the round trips of TryAcquire and of Acquire
// waiting for a grant to expire: each attempt is the one acquire statement, which also returns the database
// clock the wait is computed from; no second query asks for the clock.
func TestAcquireOneRoundTripPerAttempt(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db := pgtest.NewDB(t)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	holder := lease.New(db.Pool(t))
	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	if _, err := pool.Exec(ctx, "SELECT 1"); err != nil { // opens the connection
		t.Fatal(err)
	}
	waiter := lease.New(pool)
	if _, err := waiter.TryAcquire(ctx, "warm-up", "b", time.Second); err != nil { // prepares the statement
		t.Fatal(err)
	}
	if _, err := holder.TryAcquire(ctx, "job", "a", 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	p.ResetStats()
	if _, err := waiter.TryAcquire(ctx, "job", "b", time.Second); !errors.Is(err, pgcc.ErrHeld) {
		t.Fatalf("TryAcquire of a held lease: %v, want ErrHeld", err)
	}
	if n := p.Stats().Flights; n != 1 {
		t.Errorf("TryAcquire of a held lease: %d round trips, want 1", n)
	}
	p.ResetStats()
	if _, err := waiter.Acquire(ctx, "job", "b", time.Second); err != nil {
		t.Fatal(err)
	}
	// One attempt that finds the lease held and waits until its expiry on the database clock, one that gets
	// it; a third if the wait ended a little early.
	if n := p.Stats().Flights; n < 2 || n > 3 {
		t.Errorf("Acquire waiting for one expiry: %d round trips, want 2 (3 at most)", n)
	}
}
