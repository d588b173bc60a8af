package lease_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
)

// Only one nightly export at a time: the second caller learns who is running it, and a write guarded by a
// stale token is refused. The lease table comes from pgcc's schema: a service applies it at start-up with
// migrations.Up(ctx, pool) from the separate module github.com/pgcc/pgcc/migrations (safe from every
// replica; nil when current). The example's database already has it.
func ExampleLeases_TryAcquire() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	name := fmt.Sprintf("example-export-%d", time.Now().UnixNano())
	defer pool.Exec(ctx, "DELETE FROM pgcc.leases WHERE name = $1", name)

	leases := lease.New(pool)
	mine, err := leases.TryAcquire(ctx, name, "host-a", time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = leases.TryAcquire(ctx, name, "host-b", time.Minute)
	var held *lease.HeldError
	if errors.As(err, &held) {
		fmt.Println("already running on", held.Holder)
	}

	fmt.Println(mine.Release(ctx))
	next, err := leases.TryAcquire(ctx, name, "host-b", time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("tokens:", mine.Token, next.Token)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return lease.Guard(ctx, tx, name, mine.Token) // host-a, paused past its lease, tries to write
	})
	fmt.Println(errors.Is(err, pgcc.ErrFenced))
	// Output:
	// already running on host-a
	// <nil>
	// tokens: 1 2
	// true
}

// Keep renews a lease while the work runs and cancels the work's context the moment the lease is lost: here
// another holder takes it over after the grant was made to expire, and the work learns why from
// context.Cause.
func ExampleLease_Keep() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	name := fmt.Sprintf("example-keep-%d", time.Now().UnixNano())
	defer pool.Exec(ctx, "DELETE FROM pgcc.leases WHERE name = $1", name)

	leases := lease.New(pool)
	l, err := leases.TryAcquire(ctx, name, "host-a", time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	work, keeper := l.Keep(ctx)
	defer keeper.Stop()

	time.Sleep(1500 * time.Millisecond) // past the TTL: renewed, the lease is still ours
	fmt.Println("after 1.5s:", work.Err())

	// An operator ends the grant and another host takes over.
	_, _ = pool.Exec(ctx, "UPDATE pgcc.leases SET expires_at = clock_timestamp() WHERE name = $1", name)
	if _, err := leases.TryAcquire(ctx, name, "host-b", time.Minute); err != nil {
		fmt.Println(err)
		return
	}
	<-work.Done()
	var fenced *lease.FencedError
	fmt.Println("lost:", errors.Is(context.Cause(work), pgcc.ErrFenced), errors.As(context.Cause(work), &fenced) && fenced.Holder == "host-b")
	// Output:
	// after 1.5s: <nil>
	// lost: true true
}
