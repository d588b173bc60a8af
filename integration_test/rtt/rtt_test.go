// Package rtt_test measures what a network between the service and PostgreSQL costs: every benchmark runs
// through an in-process proxy (internal/faultnet) that adds a fixed round-trip time to each flight and counts
// the client's flights, and reports round trips per operation (rt/op) beside ops/s. Each workload is written
// with pgcc, with pgcc sending its last write with COMMIT (pgcc-final: txn.Final, or txn.Last for a repo
// write), as hand-written pgx sending the same statements one at a time (BEGIN, the statements, COMMIT),
// and, as the floor, as pgx pipelining BEGIN with the first statement and COMMIT with the last write.
// TestRoundTrips checks the round trips of each.
//
//	go test -run '^$' -bench . -benchtime 200x -count 3 ./integration_test/rtt/
//
// Sub-benchmarks are named workload/impl/rtt=…/c=…; c is the number of goroutines (and pool connections).
package rtt_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// rows is the number of accounts (and of jobs) the workloads spread over.
const rows = 10000

// Account is a row of the accounts table.
type Account struct {
	ID      int64 `db:"id"`
	N       int64 `db:"n"`
	Version int64 `db:"version"`
}

// Job is a row of the jobs table, claimed with SKIP LOCKED.
type Job struct {
	ID int64 `db:"id"`
	N  int64 `db:"n"`
}

// env is what every workload of one benchmark run shares.
type env struct {
	pool     *pgxpool.Pool
	accounts *repo.Table[Account]
	jobs     *lock.TableDef[Job]
}

// op is one operation of a workload; id is the row it works on (ignored by the hot and claim workloads).
type op func(ctx context.Context, e *env, id int64) error

type workload struct {
	name string
	hot  bool // every operation works on row 1
	impl []impl
}

type impl struct {
	name string
	op   op
}

const (
	selectForUpdate = "SELECT n FROM accounts WHERE id = $1 FOR UPDATE"
	selectN         = "SELECT n FROM accounts WHERE id = $1"
	updateN         = "UPDATE accounts SET n = $2 WHERE id = $1"
	incrementN      = "UPDATE accounts SET n = n + 1 WHERE id = $1"
	claimJob        = "SELECT id, n FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
	incrementJob    = "UPDATE jobs SET n = n + 1 WHERE id = $1"
	selectVersioned = "SELECT n, version FROM accounts WHERE id = $1"
	updateVersioned = "UPDATE accounts SET n = $2, version = version + 1 WHERE id = $1 AND version = $3"
	advisoryLock    = "SELECT pg_advisory_xact_lock($1)"
)

var errConflict = errors.New("conflict")

// pgxTx runs fn in BEGIN … COMMIT as hand-written pgx does, retrying serialization failures and deadlocks.
func pgxTx(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, fn func(tx pgx.Tx) error) error {
	for {
		err := pgx.BeginTxFunc(ctx, pool, opts, fn)
		if retryable(err) {
			continue
		}
		return err
	}
}

// pipelined runs first (with BEGIN queued before it) and last (with COMMIT queued after it) as two batches:
// the two round trips a transaction of a read and a write cannot go below.
func pipelined(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, first func(b *pgx.Batch), read func(br pgx.BatchResults) error, last func(b *pgx.Batch)) error {
	for {
		err := func() error {
			conn, err := pool.Acquire(ctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			b := &pgx.Batch{}
			b.BeginTx(opts)
			first(b)
			br := conn.SendBatch(ctx, b)
			tx := br.Tx()
			committed := false
			defer func() {
				if !committed {
					_ = tx.Rollback(ctx)
				}
			}()
			if _, err := br.Exec(); err != nil {
				_ = br.Close()
				return err
			}
			if err := read(br); err != nil {
				_ = br.Close()
				return err
			}
			if err := br.Close(); err != nil {
				return err
			}
			b = &pgx.Batch{}
			last(b)
			b.Queue("COMMIT")
			committed = true // the connection is destroyed on release if COMMIT did not end the transaction
			return tx.SendBatch(ctx, b).Close()
		}()
		if retryable(err) {
			continue
		}
		return err
	}
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.SerializationFailure || pgErr.Code == pgerrcode.DeadlockDetected)
}

func workloads() []workload {
	serializable := pgx.TxOptions{IsoLevel: pgx.Serializable}
	lockThenUpdate := []impl{
		{"pgcc", func(ctx context.Context, e *env, id int64) error {
			return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, updateN, id, n+1)
				return err
			})
		}},
		{"pgcc-final", func(ctx context.Context, e *env, id int64) error {
			return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				return txn.Final(tx, updateN, id, n+1)
			})
		}},
		{"pgx", func(ctx context.Context, e *env, id int64) error {
			return pgxTx(ctx, e.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, updateN, id, n+1)
				return err
			})
		}},
		{"pgx-pipelined", func(ctx context.Context, e *env, id int64) error {
			var n int64
			return pipelined(ctx, e.pool, pgx.TxOptions{},
				func(b *pgx.Batch) { b.Queue(selectForUpdate, id) },
				func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n) },
				func(b *pgx.Batch) { b.Queue(updateN, id, n+1) })
		}},
	}
	return []workload{
		{name: "forupdate", impl: lockThenUpdate},
		{name: "forupdate-hot", hot: true, impl: lockThenUpdate},
		{name: "modify-in-txn", impl: []impl{
			{"pgcc", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					_, err := e.accounts.Modify(ctx, tx, pgcc.Key{id}, func(_ context.Context, a *Account) error {
						a.N++
						return nil
					})
					return err
				})
			}},
			{"pgcc-final", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					_, err := e.accounts.Modify(ctx, txn.Last(tx), pgcc.Key{id}, func(_ context.Context, a *Account) error {
						a.N++
						return nil
					})
					return err
				}, txn.WithMaxAttempts(100))
			}},
			{"pgx", func(ctx context.Context, e *env, id int64) error {
				for {
					err := pgxTx(ctx, e.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
						var n, v int64
						if err := tx.QueryRow(ctx, selectVersioned, id).Scan(&n, &v); err != nil {
							return err
						}
						tag, err := tx.Exec(ctx, updateVersioned, id, n+1, v)
						if err == nil && tag.RowsAffected() != 1 {
							return errConflict
						}
						return err
					})
					if !errors.Is(err, errConflict) {
						return err
					}
				}
			}},
			{"pgx-pipelined", func(ctx context.Context, e *env, id int64) error {
				var n, v int64
				return pipelined(ctx, e.pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(selectVersioned, id) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n, &v) },
					func(b *pgx.Batch) { b.Queue(updateVersioned, id, n+1, v) })
			}},
		}},
		{name: "serializable", impl: []impl{
			{"pgcc", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, updateN, id, n+1)
					return err
				}, txn.WithIsolation(pgx.Serializable), txn.WithMaxAttempts(100))
			}},
			{"pgcc-final", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					return txn.Final(tx, updateN, id, n+1)
				}, txn.WithIsolation(pgx.Serializable), txn.WithMaxAttempts(100))
			}},
			{"pgx", func(ctx context.Context, e *env, id int64) error {
				return pgxTx(ctx, e.pool, serializable, func(tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, updateN, id, n+1)
					return err
				})
			}},
			{"pgx-pipelined", func(ctx context.Context, e *env, id int64) error {
				var n int64
				return pipelined(ctx, e.pool, serializable,
					func(b *pgx.Batch) { b.Queue(selectN, id) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n) },
					func(b *pgx.Batch) { b.Queue(updateN, id, n+1) })
			}},
		}},
		{name: "claim", impl: []impl{
			{"pgcc", func(ctx context.Context, e *env, _ int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					jobs, err := lock.Claim(ctx, tx, e.jobs, 1, lock.OrderBy("id"))
					if err != nil || len(jobs) == 0 {
						return err
					}
					_, err = tx.Exec(ctx, incrementJob, jobs[0].ID)
					return err
				})
			}},
			{"pgcc-final", func(ctx context.Context, e *env, _ int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					jobs, err := lock.Claim(ctx, tx, e.jobs, 1, lock.OrderBy("id"))
					if err != nil || len(jobs) == 0 {
						return err
					}
					return txn.Final(tx, incrementJob, jobs[0].ID)
				})
			}},
			{"pgx", func(ctx context.Context, e *env, _ int64) error {
				return pgxTx(ctx, e.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
					var j Job
					if err := tx.QueryRow(ctx, claimJob).Scan(&j.ID, &j.N); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementJob, j.ID)
					return err
				})
			}},
			{"pgx-pipelined", func(ctx context.Context, e *env, _ int64) error {
				var j Job
				return pipelined(ctx, e.pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(claimJob) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&j.ID, &j.N) },
					func(b *pgx.Batch) { b.Queue(incrementJob, j.ID) })
			}},
		}},
		{name: "advisory", impl: []impl{
			{"pgcc", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := lock.XactLock(ctx, tx, pgcc.AdvisoryKey(id)); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementN, id)
					return err
				})
			}},
			{"pgcc-final", func(ctx context.Context, e *env, id int64) error {
				return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := lock.XactLock(ctx, tx, pgcc.AdvisoryKey(id)); err != nil {
						return err
					}
					return txn.Final(tx, incrementN, id)
				})
			}},
			{"pgx", func(ctx context.Context, e *env, id int64) error {
				return pgxTx(ctx, e.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, advisoryLock, id); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementN, id)
					return err
				})
			}},
			{"pgx-pipelined", func(ctx context.Context, e *env, id int64) error {
				return pipelined(ctx, e.pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(advisoryLock, id) },
					func(br pgx.BatchResults) error { _, err := br.Exec(); return err },
					func(b *pgx.Batch) { b.Queue(incrementN, id) })
			}},
		}},
		{name: "modify-pool", impl: []impl{
			{"pgcc", func(ctx context.Context, e *env, id int64) error {
				_, err := e.accounts.Modify(ctx, e.pool, pgcc.Key{id}, func(_ context.Context, a *Account) error {
					a.N++
					return nil
				}, txn.WithMaxAttempts(100))
				return err
			}},
			{"pgx", func(ctx context.Context, e *env, id int64) error {
				for {
					var n, v int64
					if err := e.pool.QueryRow(ctx, selectVersioned, id).Scan(&n, &v); err != nil {
						return err
					}
					tag, err := e.pool.Exec(ctx, updateVersioned, id, n+1, v)
					if err != nil || tag.RowsAffected() == 1 {
						return err
					}
				}
			}},
		}},
	}
}

// setup creates the tables on a fresh database behind a proxy, and returns a function giving a pool of c
// connections through it (one pool per c, opened on first use).
func setup(b testing.TB) (func(c int) *env, *faultnet.Proxy) {
	b.Helper()
	db := pgtest.NewDB(b)
	p, dsn := faultnet.ForDSN(b, db.DSN)
	ctx := context.Background()
	admin := db.Pool(b)
	if _, err := admin.Exec(ctx, fmt.Sprintf(`
		CREATE TABLE accounts (id bigint PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL);
		INSERT INTO accounts SELECT g, 0, 1 FROM generate_series(1, %[1]d) g;
		CREATE TABLE jobs (id bigint PRIMARY KEY, n bigint NOT NULL);
		INSERT INTO jobs SELECT g, 0 FROM generate_series(1, %[1]d) g;
		ANALYZE accounts; ANALYZE jobs`, rows)); err != nil {
		b.Fatal(err)
	}
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		b.Fatal(err)
	}
	jobs, err := lock.NewTable[Job]("jobs")
	if err != nil {
		b.Fatal(err)
	}
	envs := map[int]*env{}
	return func(c int) *env {
		if e := envs[c]; e != nil {
			return e
		}
		pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(b, func(cfg *pgxpool.Config) {
			cfg.MaxConns, cfg.MinConns = int32(c), 0
			cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
		})
		envs[c] = &env{pool: pool, accounts: accounts, jobs: jobs}
		return envs[c]
	}, p
}

// run runs o b.N times over c goroutines and reports ops/s and round trips per operation. A warm-up of a few
// operations per goroutine opens the connections and prepares the statements first.
func run(b *testing.B, e *env, p *faultnet.Proxy, c int, hot bool, o op) {
	ctx := context.Background()
	do := func(r *rand.Rand) {
		id := int64(1)
		if !hot {
			id = r.Int64N(rows) + 1
		}
		if err := o(ctx, e, id); err != nil {
			b.Error(err)
		}
	}
	work := func(n int64, next *atomic.Int64) {
		var wg sync.WaitGroup
		for w := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), 42))
				for next.Add(1) <= n {
					do(r)
				}
			}()
		}
		wg.Wait()
	}
	var warm atomic.Int64
	work(int64(4*c), &warm)
	p.ResetStats()
	b.ResetTimer()
	var next atomic.Int64
	start := time.Now()
	work(int64(b.N), &next)
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(p.Stats().Flights)/float64(b.N), "rt/op")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}

// BenchmarkRTT runs every workload, implementation, round-trip time and concurrency.
func BenchmarkRTT(b *testing.B) {
	pgtest.Deadline(b, time.Hour) // the whole set takes minutes
	pool, p := setup(b)
	for _, w := range workloads() {
		for _, rtt := range []time.Duration{0, 500 * time.Microsecond, time.Millisecond} {
			for _, c := range []int{1, 8} {
				for _, im := range w.impl {
					b.Run(fmt.Sprintf("%s/%s/rtt=%v/c=%d", w.name, im.name, rtt, c), func(b *testing.B) {
						p.SetRTT(rtt)
						run(b, pool(c), p, c, w.hot, im.op)
					})
				}
			}
		}
	}
}

// BenchmarkAlternating runs the implementations of each workload one operation after the other, in turn,
// on one connection (c=1), and reports each one's median latency (impl-µs) and its ratio to hand-written
// pgx (impl/pgx, below 1 is faster): on a machine whose load changes from one second to the next, a load
// spike then falls on every implementation alike, where BenchmarkRTT's cells, run one after the other, can
// differ by a factor of two. b.N is the number of turns.
//
//	go test -run '^$' -bench 'Alternating/modify-pool' -benchtime 1000x ./integration_test/rtt/
func BenchmarkAlternating(b *testing.B) {
	pgtest.Deadline(b, time.Hour)
	pool, p := setup(b)
	for _, w := range workloads() {
		for _, rtt := range []time.Duration{0, time.Millisecond} {
			b.Run(fmt.Sprintf("%s/rtt=%v", w.name, rtt), func(b *testing.B) {
				p.SetRTT(rtt)
				e := pool(1)
				ctx := context.Background()
				r := rand.New(rand.NewPCG(1, 42))
				id := func() int64 {
					if w.hot {
						return 1
					}
					return r.Int64N(rows) + 1
				}
				for range 4 { // open the connection, prepare the statements
					for _, im := range w.impl {
						if err := im.op(ctx, e, id()); err != nil {
							b.Fatal(err)
						}
					}
				}
				times := make([][]time.Duration, len(w.impl))
				for b.Loop() {
					for i, im := range w.impl {
						start := time.Now()
						if err := im.op(ctx, e, id()); err != nil {
							b.Fatal(err)
						}
						times[i] = append(times[i], time.Since(start))
					}
				}
				median := make([]float64, len(w.impl))
				for i := range w.impl {
					slices.Sort(times[i])
					median[i] = float64(times[i][len(times[i])/2].Microseconds())
				}
				pgx := slices.IndexFunc(w.impl, func(im impl) bool { return im.name == "pgx" })
				for i, im := range w.impl {
					b.ReportMetric(median[i], im.name+"-µs")
					if i != pgx && pgx >= 0 && median[pgx] > 0 {
						b.ReportMetric(median[i]/median[pgx], im.name+"/pgx")
					}
				}
			})
		}
	}
}

// TestRoundTrips checks the round trips per operation that the benchmarks report, on one connection without
// added latency: what each implementation sends does not depend on either.
func TestRoundTrips(t *testing.T) {
	t.Parallel()
	want := map[string]float64{"pgx": 4, "pgcc": 3, "pgcc-final": 2, "pgx-pipelined": 2}
	pool, p := setup(t)
	e := pool(1)
	for _, w := range workloads() {
		for _, im := range w.impl {
			n := want[im.name]
			if w.name == "modify-pool" {
				n = 2 // a read and an autocommitted compare-and-swap, for pgx and pgcc alike
			}
			ctx := context.Background()
			for id := range int64(2) { // the first prepares the statements
				p.ResetStats()
				if err := im.op(ctx, e, id+1); err != nil {
					t.Fatalf("%s/%s: %v", w.name, im.name, err)
				}
			}
			if got := float64(p.Stats().Flights); got != n {
				t.Errorf("%s/%s: %v round trips, want %v", w.name, im.name, got, n)
			}
		}
	}
}
