package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
)

// sleepUntil waits on the database clock until t has passed.
func sleepUntil(t *testing.T, pool *pgxpool.Pool, at time.Time) {
	t.Helper()
	_, err := pool.Exec(context.Background(),
		"SELECT pg_sleep(greatest(0, extract(epoch FROM $1::timestamptz - clock_timestamp())) + 0.01)", at)
	if err != nil {
		t.Fatal(err)
	}
}

// guardedWrite runs a transaction that checks the lease token and then writes to items row 1.
func guardedWrite(ctx context.Context, pool *pgxpool.Pool, name string, token int64) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := lease.Guard(ctx, tx, name, token); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE items SET n = $1 WHERE id = 1", token)
		return err
	})
}

func TestLeaseHeldReleaseAndTokens(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	a, err := leases.TryAcquire(ctx, "nightly", "worker-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.Token != 1 || a.Holder != "worker-a" || a.Name != "nightly" || !a.Expires.After(a.Acquired) {
		t.Errorf("first grant = %+v", a)
	}
	_, err = leases.TryAcquire(ctx, "nightly", "worker-b", time.Minute)
	var held *lease.HeldError
	if !errors.As(err, &held) || !errors.Is(err, pgcc.ErrHeld) {
		t.Fatalf("second TryAcquire = %v, want a HeldError", err)
	}
	if held.Name != "nightly" || held.Holder != "worker-a" || !held.Since.Equal(a.Acquired) || !held.Until.Equal(a.Expires) {
		t.Errorf("HeldError = %+v, want worker-a from %v until %v", held, a.Acquired, a.Expires)
	}
	// Not re-entrant, and another name is independent.
	if _, err := leases.TryAcquire(ctx, "nightly", "worker-a", time.Minute); !errors.Is(err, pgcc.ErrHeld) {
		t.Errorf("re-acquire by the holder = %v, want ErrHeld", err)
	}
	if other, err := leases.TryAcquire(ctx, "hourly", "worker-b", time.Minute); err != nil || other.Token != 1 {
		t.Errorf("other lease = %+v, %v", other, err)
	}

	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("second Release = %v, want ErrFenced", err)
	}
	if err := guardedWrite(ctx, pool, "nightly", a.Token); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("write after release = %v, want ErrFenced", err)
	}
	b, err := leases.TryAcquire(ctx, "nightly", "worker-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	a2, err := leases.Acquire(ctx, "nightly", "worker-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.Token != 2 || a2.Token != 3 {
		t.Errorf("tokens %d, %d after 1: want 2, 3 (strictly increasing across releases)", b.Token, a2.Token)
	}
	if err := guardedWrite(ctx, pool, "nightly", a2.Token); err != nil {
		t.Errorf("write by the holder: %v", err)
	}
	if err := guardedWrite(ctx, pool, "never-granted", 1); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("write under a lease that does not exist = %v", err)
	}
	for _, bad := range []func() error{
		func() error { _, err := leases.TryAcquire(ctx, "", "x", time.Second); return err },
		func() error { _, err := leases.TryAcquire(ctx, "x", "", time.Second); return err },
		func() error { _, err := leases.TryAcquire(ctx, "x", "y", time.Microsecond); return err },
	} {
		if err := bad(); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("invalid lease arguments: %v", err)
		}
	}
}

// TestLeaseExpiryTakeoverAndFencing: worker-a's one-second lease expires (on the database clock) while it is
// paused; worker-b, waiting in Acquire, takes over with a greater token; worker-a's renewal and its write are
// then rejected, and worker-b's write goes through.
func TestLeaseExpiryTakeoverAndFencing(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	a, err := leases.TryAcquire(ctx, "report", "worker-a", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := guardedWrite(ctx, pool, "report", a.Token); err != nil {
		t.Fatalf("write while the lease is live: %v", err)
	}
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	b, err := leases.Acquire(actx, "report", "worker-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.Token <= a.Token || b.Acquired.Before(a.Expires) {
		t.Errorf("takeover token %d at %v; want > %d, not before the expiry %v", b.Token, b.Acquired, a.Token, a.Expires)
	}
	err = a.Renew(ctx)
	var fenced *lease.FencedError
	if !errors.As(err, &fenced) {
		t.Fatalf("renewal after takeover = %v, want FencedError", err)
	}
	if fenced.Token != a.Token || fenced.Current != b.Token || fenced.Holder != "worker-b" || fenced.Expired {
		t.Errorf("FencedError = %+v", fenced)
	}
	err = guardedWrite(ctx, pool, "report", a.Token)
	if !errors.As(err, &fenced) || fenced.Current != b.Token {
		t.Errorf("old holder's write = %v, want FencedError naming token %d", err, b.Token)
	}
	if err := guardedWrite(ctx, pool, "report", b.Token); err != nil {
		t.Errorf("new holder's write: %v", err)
	}
	if n := queryInt(t, pool, "SELECT n FROM items WHERE id = 1"); n != b.Token {
		t.Errorf("row written by token %d, want %d", n, b.Token)
	}
}

// TestLeaseExpiredNotTakenIsFenced: a lease past its expiry fences its holder even when nobody took over.
func TestLeaseExpiredNotTakenIsFenced(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	a, err := lease.New(pool).TryAcquire(ctx, "job", "worker-a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	sleepUntil(t, pool, a.Expires)
	err = guardedWrite(ctx, pool, "job", a.Token)
	var fenced *lease.FencedError
	if !errors.As(err, &fenced) || !fenced.Expired || fenced.Current != a.Token {
		t.Errorf("write after expiry = %v, want FencedError with Expired", err)
	}
	if err := a.Renew(ctx); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("renewal after expiry = %v, want ErrFenced", err)
	}
}

func TestLeaseRenewal(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	a, err := leases.TryAcquire(ctx, "leader", "node-1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Expires
	sleepUntil(t, pool, first.Add(-500*time.Millisecond))
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.Expires.After(first) {
		t.Fatalf("renewed expiry %v not after %v", a.Expires, first)
	}
	// Past the original expiry the renewed lease still holds.
	sleepUntil(t, pool, first)
	_, err = leases.TryAcquire(ctx, "leader", "node-2", time.Second)
	var held *lease.HeldError
	if !errors.As(err, &held) || held.Holder != "node-1" || !held.Until.Equal(a.Expires) {
		t.Errorf("TryAcquire past the original expiry = %v, want held by node-1 until %v", err, a.Expires)
	}
	if err := guardedWrite(ctx, pool, "leader", a.Token); err != nil {
		t.Errorf("write by the renewed holder: %v", err)
	}
}

// TestGuardHoldsOffTakeover: a transaction that passed Guard keeps the lease row share-locked, so a takeover
// after expiry waits until that transaction commits, and the old holder's guarded write is never
// interleaved with the new holder's.
func TestGuardHoldsOffTakeover(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	a, err := leases.TryAcquire(ctx, "export", "worker-a", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lease.Guard(ctx, tx, "export", a.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE items SET n = 100 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	sleepUntil(t, pool, a.Expires)

	type result struct {
		lease *lease.Lease
		err   error
	}
	done := make(chan result, 1)
	go func() {
		l, err := leases.TryAcquire(ctx, "export", "worker-b", time.Minute)
		done <- result{l, err}
	}()
	// The takeover waits for the guarded transaction's share lock on the lease row.
	deadline := time.Now().Add(30 * time.Second) // a statement took over 10 s to reach its lock on a loaded machine
	for queryInt(t, pool, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%pgcc.leases%'") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the takeover never waited for the guarded transaction")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.lease.Token != a.Token+1 {
		t.Errorf("takeover token %d, want %d", r.lease.Token, a.Token+1)
	}
	if err := guardedWrite(ctx, pool, "export", a.Token); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("old holder's next write = %v, want ErrFenced", err)
	}
	if n := queryInt(t, pool, "SELECT n FROM items WHERE id = 1"); n != 100 {
		t.Errorf("n = %d, want the guarded write's 100", n)
	}
}

func TestGuardNoWaitDuringTakeover(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	a, err := lease.New(pool).TryAcquire(ctx, "l", "h", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// A transaction updating the lease row (as a takeover does) makes a NOWAIT guard fail fast.
	other, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Rollback(ctx) }()
	if _, err := other.Exec(ctx, "UPDATE pgcc.leases SET renewed_at = now() WHERE name = 'l'"); err != nil {
		t.Fatal(err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		err := lease.Guard(ctx, tx, "l", a.Token, lease.NoWait(), lease.WithDiagnostics(pool))
		if !errors.Is(err, pgcc.ErrLockNotAvailable) {
			t.Fatalf("Guard NOWAIT = %v", err)
		}
		le := lockError(t, err)
		if le.Table != `"pgcc"."leases"` || len(le.Blockers) != 1 || le.Blockers[0].PID != int(other.Conn().PgConn().PID()) {
			t.Errorf("LockError = %+v", le)
		}
	})
}

func TestLeaseAcquireHonoursContext(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0)
	leases := lease.New(pool)
	if _, err := leases.TryAcquire(context.Background(), "busy", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := leases.Acquire(ctx, "busy", "b", time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, pgcc.ErrHeld) {
		t.Fatalf("Acquire = %v, want the deadline and the HeldError", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Acquire returned %v after its deadline of 300ms", elapsed)
	}
}
