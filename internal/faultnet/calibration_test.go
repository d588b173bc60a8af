package faultnet_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
)

// TestLatencyCalibration measures the round trip of SELECT 1 (simple protocol: one flight each way) straight
// to the server and through the proxy with 0, 0.5 and 1 ms added, and logs how far the added time is from what
// was asked. The machine is shared, so it asserts only what holds by construction (a round trip is never
// shorter than the delay added to it) and a loose upper bound. It runs alone (no t.Parallel): the parallel
// tests of the package wait until it ends.
func TestLatencyCalibration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := pgtest.NewDB(t)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	connect := func(dsn string) *pgconn.PgConn {
		c, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	direct, proxied := connect(db.DSN), connect(dsn)

	const samples = 300
	measure := func(c *pgconn.PgConn) (p50, p90 time.Duration) {
		rtts := make([]time.Duration, 0, samples)
		for i := range samples + 20 {
			start := time.Now()
			if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
				t.Fatal(err)
			}
			if i >= 20 { // warm-up first
				rtts = append(rtts, time.Since(start))
			}
		}
		slices.Sort(rtts)
		return rtts[samples/2], rtts[samples*9/10]
	}

	// The error is logged against two baselines: a direct connection (the proxy's own two extra socket hops
	// included) and the proxy with nothing added (what a benchmark comparing delays sees).
	base, baseP90 := measure(direct)
	t.Logf("direct:              p50 %8v  p90 %8v", base, baseP90)
	var proxy0 time.Duration
	for _, rtt := range []time.Duration{0, 500 * time.Microsecond, time.Millisecond} {
		p.SetRTT(rtt)
		p50, p90 := measure(proxied)
		if rtt == 0 {
			proxy0 = p50
		}
		t.Logf("proxy, +%-6v RTT:  p50 %8v  p90 %8v  error vs direct+RTT %+9v  vs proxy(0)+RTT %+9v",
			rtt, p50, p90, p50-base-rtt, p50-proxy0-rtt)
		if p50 < rtt {
			t.Errorf("+%v RTT: median round trip %v is shorter than the delay added", rtt, p50)
		}
		if p50 > base+rtt+50*time.Millisecond {
			t.Errorf("+%v RTT: median round trip %v, far above direct %v plus the delay", rtt, p50, base)
		}
	}
}
