// Package rtt_test measures what a network between the service and PostgreSQL costs: every benchmark runs
// through an in-process proxy (internal/faultnet) that adds a fixed round-trip time to each flight and counts
// the client's flights, and reports round trips per operation (rt/op) beside ops/s. The workloads and their
// implementations (pgcc, pgcc with txn.Final or a lock helper, hand-written pgx, pipelined pgx) are those of
// internal/rttwork, which `pgcc bench -rtt` runs too.
//
//	go test -run '^$' -bench . -benchtime 200x -count 3 ./integration_test/rtt/
//
// Sub-benchmarks are named workload/impl/rtt=…/c=…; c is the number of goroutines (and pool connections).
package rtt_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/rttwork"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup creates the tables on a fresh database behind a proxy, and returns a function giving the environment
// of a pool of c connections through it (one pool per c, opened on first use).
func setup(t testing.TB, rows int) (func(c int) *rttwork.Env, *faultnet.Proxy) {
	t.Helper()
	db := pgtest.NewDB(t)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	if err := rttwork.Setup(context.Background(), db.Pool(t), rows); err != nil {
		t.Fatal(err)
	}
	envs := map[int]*rttwork.Env{}
	return func(c int) *rttwork.Env {
		if e := envs[c]; e != nil {
			return e
		}
		pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, func(cfg *pgxpool.Config) {
			cfg.MaxConns, cfg.MinConns = int32(c), 0
			cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
			// No pool pings (a connection idle for a second gets one): the proxy would count it as a round
			// trip of the operation.
			cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		})
		e, err := rttwork.NewEnv(pool, rows)
		if err != nil {
			t.Fatal(err)
		}
		envs[c] = e
		return e
	}, p
}

// TestRoundTrips counts the round trips of each implementation on one connection: hand-written pgx pays four
// per transaction (two for modify-pool, which runs none), and every implementation that sends its last write
// with COMMIT (txn.Final, txn.Last, the lock helpers, pipelined pgx) two; plain pgcc three (BEGIN travels
// with the first statement, COMMIT alone), except modify-pool's two.
func TestRoundTrips(t *testing.T) {
	t.Parallel()
	env, p := setup(t, 100)
	e := env(1)
	for _, w := range rttwork.Workloads() {
		for _, im := range w.Impls {
			res, err := rttwork.Measure(context.Background(), e, p, 1, w.Hot, im.Op, 10, 0, 1)
			if err == nil {
				err = res.FirstError
			}
			if err != nil {
				t.Fatalf("%s/%s: %v", w.Name, im.Name, err)
			}
			got := res.RoundTripsPerOp()
			want := 2.0
			switch {
			case w.Name == "modify-pool":
			case im.Name == rttwork.PGX:
				want = 4
			case im.Name == rttwork.PGCC:
				want = 3
			}
			if got != want {
				t.Errorf("%s/%s: %.1f round trips per operation, want %v", w.Name, im.Name, got, want)
			}
		}
	}
}

// BenchmarkRTT runs every workload, implementation, round-trip time and concurrency.
func BenchmarkRTT(b *testing.B) {
	pgtest.Deadline(b, time.Hour) // the whole set takes minutes
	env, p := setup(b, rttwork.DefaultRows)
	for _, w := range rttwork.Workloads() {
		for _, rtt := range []time.Duration{0, 500 * time.Microsecond, time.Millisecond} {
			for _, c := range []int{1, 8} {
				for _, im := range w.Impls {
					b.Run(fmt.Sprintf("%s/%s/rtt=%v/c=%d", w.Name, im.Name, rtt, c), func(b *testing.B) {
						p.SetRTT(rtt)
						b.ResetTimer()
						res, err := rttwork.Measure(context.Background(), env(c), p, c, w.Hot, im.Op, int64(b.N), 0, 1)
						b.StopTimer()
						if err == nil {
							err = res.FirstError
						}
						if err != nil {
							b.Fatal(err)
						}
						b.ReportMetric(res.RoundTripsPerOp(), "rt/op")
						b.ReportMetric(res.OpsPerSecond(), "ops/s")
					})
				}
			}
		}
	}
}

// BenchmarkAlternating runs the implementations of each workload one operation after the other, in turn, on one
// connection (c=1), and reports each one's median latency (impl-µs) and its ratio to hand-written pgx (impl/pgx,
// below 1 is faster): on a machine whose load changes from one second to the next, a load spike then falls on
// every implementation alike, where BenchmarkRTT's cells, run one after the other, can differ by a factor of
// two. b.N is the number of turns.
//
//	go test -run '^$' -bench 'Alternating/modify-pool' -benchtime 1000x ./integration_test/rtt/
func BenchmarkAlternating(b *testing.B) {
	pgtest.Deadline(b, time.Hour)
	env, p := setup(b, rttwork.DefaultRows)
	for _, w := range rttwork.Workloads() {
		for _, rtt := range []time.Duration{0, time.Millisecond} {
			b.Run(fmt.Sprintf("%s/rtt=%v", w.Name, rtt), func(b *testing.B) {
				p.SetRTT(rtt)
				e := env(1)
				ctx := context.Background()
				r := rand.New(rand.NewPCG(1, 42))
				id := func() int64 {
					if w.Hot {
						return 1
					}
					return r.Int64N(rttwork.DefaultRows) + 1
				}
				for range 4 { // open the connection, prepare the statements
					for _, im := range w.Impls {
						if err := im.Op(ctx, e, id()); err != nil {
							b.Fatal(err)
						}
					}
				}
				times := make([][]time.Duration, len(w.Impls))
				for b.Loop() {
					for i, im := range w.Impls {
						start := time.Now()
						if err := im.Op(ctx, e, id()); err != nil {
							b.Fatal(err)
						}
						times[i] = append(times[i], time.Since(start))
					}
				}
				median := make([]float64, len(w.Impls))
				for i := range w.Impls {
					slices.Sort(times[i])
					median[i] = float64(times[i][len(times[i])/2].Microseconds())
				}
				pgx := slices.IndexFunc(w.Impls, func(im rttwork.Impl) bool { return im.Name == rttwork.PGX })
				for i, im := range w.Impls {
					b.ReportMetric(median[i], im.Name+"-µs")
					if i != pgx && pgx >= 0 && median[pgx] > 0 {
						b.ReportMetric(median[i]/median[pgx], im.Name+"/pgx")
					}
				}
			})
		}
	}
}
