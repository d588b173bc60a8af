package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
)

// TestConnectionFailuresAreTyped: the fault suite (integration_test/faults) saw Acquire return raw
// connection errors (FATAL 57P01, a reset, connection refused) during backend kills, resets and a server
// restart. Now a statement whose connection failed after it was sent is ErrCommitUnknown (the grant, renewal or
// release may have been applied), a failure to connect is ErrConnectionLost, and Acquire on a pool tries again
// until ctx ends, getting a grant whose token it read.
func TestConnectionFailuresAreTyped(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	proxy, dsn := faultnet.ForDSN(t, db.DSN)
	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, func(c *pgxpool.Config) {
		c.MaxConns = 2
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	direct := db.Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ls := lease.New(pool)
	isAcquire := func(sql string) bool { return strings.Contains(sql, "INSERT INTO pgcc.leases") }

	// The grant's reply is lost: TryAcquire cannot know whether it holds the lease.
	rule := proxy.OnQuery(isAcquire, faultnet.LoseReply)
	_, err := ls.TryAcquire(ctx, "job", "a", time.Minute)
	if rule.Fired() != 1 || !errors.Is(err, pgcc.ErrCommitUnknown) {
		t.Fatalf("TryAcquire with its reply lost: %v (%T), rule fired %d times; want ErrCommitUnknown", err, err, rule.Fired())
	}
	// (pgx prepares the statement first, and the rule loses the prepare's reply: the grant was in fact not made;
	// from the client's side the two cannot be told apart.)
	if n := queryInt(t, direct, "SELECT count(*) FROM pgcc.leases WHERE name = 'job'"); n > 1 {
		t.Fatalf("%d grants recorded", n)
	}

	// New connections refused: nothing was sent.
	proxy.ResetAll()
	proxy.RefuseNew(true)
	_, err = ls.TryAcquire(ctx, "other", "a", time.Minute)
	if !errors.Is(err, pgcc.ErrConnectionLost) {
		t.Fatalf("TryAcquire with connections refused: %v (%T); want ErrConnectionLost", err, err)
	}

	// Acquire rides out a short outage, and its reply lost once more: it gets a grant whose token it read.
	go func() {
		time.Sleep(300 * time.Millisecond)
		proxy.RefuseNew(false)
	}()
	proxy.OnQuery(isAcquire, faultnet.LoseReply)
	start := time.Now()
	l, err := ls.Acquire(ctx, "job2", "b", 200*time.Millisecond)
	if err != nil {
		t.Fatalf("Acquire through an outage: %v", err)
	}
	t.Logf("Acquire took %v through the outage and a lost reply", time.Since(start))
	if got := queryInt(t, direct, "SELECT token FROM pgcc.leases WHERE name = 'job2'"); got != l.Token {
		t.Fatalf("the lease's token is %d, Acquire returned %d", got, l.Token)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
