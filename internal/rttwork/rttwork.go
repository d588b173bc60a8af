// Package rttwork holds the round-trip workloads of docs/latency.md: each transactional pattern of the
// latency issue written with pgcc (txn.Run, repo, lock), with pgcc plus txn.Final or a lock helper that sends
// the last write with COMMIT, as hand-written pgx sending BEGIN, the statements and COMMIT one by one, and as
// pgx pipelining BEGIN with the first statement and COMMIT with the last write (the floor). [Measure] runs one
// of them through an internal/faultnet proxy and counts the round trips it waited for.
//
// It is shared by the benchmarks of integration_test/rtt and by `pgcc bench -rtt`; it imports the library's
// public packages only, so that what it measures is what users get.
package rttwork

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// DefaultRows is the number of accounts (and of jobs) the workloads spread over unless told otherwise.
const DefaultRows = 10000

// The implementations' names, as the benchmarks and `pgcc bench -rtt` print them.
const (
	// PGX is hand-written pgx: pgx.BeginTxFunc, each statement its own round trip, COMMIT too.
	PGX = "pgx"
	// PGCC is the same work with pgcc (txn.Run, repo, lock), written as a user would without thinking of
	// round trips.
	PGCC = "pgcc"
	// PGCCFinal is PGCC with the last write queued with txn.Final (txn.Last for a repo write), to travel with
	// COMMIT.
	PGCCFinal = "pgcc-final"
	// PGCCLock is the work done by one of package lock's read-modify-write helpers (lock.Update,
	// lock.ClaimAndUpdate), which send their write with COMMIT themselves.
	PGCCLock = "pgcc-lock"
	// PGXPipelined is pgx sending BEGIN with the first statement and COMMIT with the last write: the floor.
	PGXPipelined = "pgx-pipelined"
)

// Account is a row of the accounts table.
type Account struct {
	ID      int64 `db:"id"`
	N       int64 `db:"n"`
	Version int64 `db:"version"`
}

// counted is an account as the lock helper's workload reads it: id and n, no version.
type counted struct {
	ID int64 `db:"id"`
	N  int64 `db:"n"`
}

// Job is a row of the jobs table, claimed with SKIP LOCKED.
type Job struct {
	ID int64 `db:"id"`
	N  int64 `db:"n"`
}

// Env is what the operations of one pool share.
type Env struct {
	// Pool is the pool the operations run on, typically through a faultnet proxy.
	Pool     *pgxpool.Pool
	rows     int
	accounts *repo.Table[Account]
	counted  *lock.TableDef[counted]
	jobs     *lock.TableDef[Job]
}

// NewEnv describes the tables [Setup] created for operations on pool, in the schema pool's search_path
// names; rows is the number Setup was given.
func NewEnv(pool *pgxpool.Pool, rows int) (*Env, error) {
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		return nil, err
	}
	counted, err := lock.NewTable[counted]("accounts")
	if err != nil {
		return nil, err
	}
	jobs, err := lock.NewTable[Job]("jobs")
	if err != nil {
		return nil, err
	}
	return &Env{Pool: pool, rows: rows, accounts: accounts, counted: counted, jobs: jobs}, nil
}

// Setup creates the accounts and jobs tables, rows rows each, in db's current schema.
func Setup(ctx context.Context, db pgcc.DBTX, rows int) error {
	if rows < 1 {
		return fmt.Errorf("%w: rttwork needs at least one row, got %d", pgcc.ErrInvalidArgument, rows)
	}
	_, err := db.Exec(ctx, fmt.Sprintf(`
		CREATE TABLE accounts (id bigint PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL);
		INSERT INTO accounts SELECT g, 0, 1 FROM generate_series(1, %[1]d) g;
		CREATE TABLE jobs (id bigint PRIMARY KEY, n bigint NOT NULL);
		INSERT INTO jobs SELECT g, 0 FROM generate_series(1, %[1]d) g;
		ANALYZE accounts; ANALYZE jobs`, rows))
	return err
}

// Op is one operation of a workload; id is the row it works on (ignored by the hot and claim workloads).
type Op func(ctx context.Context, e *Env, id int64) error

// Workload is one transactional pattern and its implementations.
type Workload struct {
	// Name is the workload's name: forupdate, forupdate-hot, modify-in-txn, serializable, claim, advisory,
	// modify-pool.
	Name string
	// Hot says that every operation works on row 1.
	Hot bool
	// Impls are the implementations.
	Impls []Impl
}

// Impl is one implementation of a workload.
type Impl struct {
	// Name is one of the names above ([PGX], [PGCC], …).
	Name string
	// Op is one operation.
	Op Op
}

// Impl returns w's implementation called name, and whether there is one.
func (w Workload) Impl(name string) (Impl, bool) {
	for _, im := range w.Impls {
		if im.Name == name {
			return im, true
		}
	}
	return Impl{}, false
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

// Workloads returns every workload, in the order of docs/latency.md's tables.
func Workloads() []Workload {
	serializable := pgx.TxOptions{IsoLevel: pgx.Serializable}
	lockThenUpdate := []Impl{
		{PGCC, func(ctx context.Context, e *Env, id int64) error {
			return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, updateN, id, n+1)
				return err
			})
		}},
		{PGCCFinal, func(ctx context.Context, e *Env, id int64) error {
			return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				return txn.Final(tx, updateN, id, n+1)
			})
		}},
		{PGCCLock, func(ctx context.Context, e *Env, id int64) error {
			_, err := lock.Update(ctx, e.Pool, e.counted, pgcc.Key{id}, func(_ context.Context, a *counted) error {
				a.N++
				return nil
			}, lock.WithStrength(lock.ForUpdate))
			return err
		}},
		{PGX, func(ctx context.Context, e *Env, id int64) error {
			return pgxTx(ctx, e.Pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
				var n int64
				if err := tx.QueryRow(ctx, selectForUpdate, id).Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, updateN, id, n+1)
				return err
			})
		}},
		{PGXPipelined, func(ctx context.Context, e *Env, id int64) error {
			var n int64
			return pipelined(ctx, e.Pool, pgx.TxOptions{},
				func(b *pgx.Batch) { b.Queue(selectForUpdate, id) },
				func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n) },
				func(b *pgx.Batch) { b.Queue(updateN, id, n+1) })
		}},
	}
	return []Workload{
		{Name: "forupdate", Impls: lockThenUpdate},
		{Name: "forupdate-hot", Hot: true, Impls: lockThenUpdate},
		{Name: "modify-in-txn", Impls: []Impl{
			{PGCC, func(ctx context.Context, e *Env, id int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					_, err := e.accounts.Modify(ctx, tx, pgcc.Key{id}, func(_ context.Context, a *Account) error {
						a.N++
						return nil
					})
					return err
				})
			}},
			{PGCCFinal, func(ctx context.Context, e *Env, id int64) error {
				// txn.Last: the compare-and-swap travels with COMMIT, its conflict raised by the server.
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					_, err := e.accounts.Modify(ctx, txn.Last(tx), pgcc.Key{id}, func(_ context.Context, a *Account) error {
						a.N++
						return nil
					})
					return err
				}, txn.WithMaxAttempts(100))
			}},
			{PGX, func(ctx context.Context, e *Env, id int64) error {
				for {
					err := pgxTx(ctx, e.Pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
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
			{PGXPipelined, func(ctx context.Context, e *Env, id int64) error {
				var n, v int64
				return pipelined(ctx, e.Pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(selectVersioned, id) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n, &v) },
					func(b *pgx.Batch) { b.Queue(updateVersioned, id, n+1, v) })
			}},
		}},
		{Name: "serializable", Impls: []Impl{
			{PGCC, func(ctx context.Context, e *Env, id int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, updateN, id, n+1)
					return err
				}, txn.WithIsolation(pgx.Serializable), txn.WithMaxAttempts(100))
			}},
			{PGCCFinal, func(ctx context.Context, e *Env, id int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					return txn.Final(tx, updateN, id, n+1)
				}, txn.WithIsolation(pgx.Serializable), txn.WithMaxAttempts(100))
			}},
			{PGX, func(ctx context.Context, e *Env, id int64) error {
				return pgxTx(ctx, e.Pool, serializable, func(tx pgx.Tx) error {
					var n int64
					if err := tx.QueryRow(ctx, selectN, id).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, updateN, id, n+1)
					return err
				})
			}},
			{PGXPipelined, func(ctx context.Context, e *Env, id int64) error {
				var n int64
				return pipelined(ctx, e.Pool, serializable,
					func(b *pgx.Batch) { b.Queue(selectN, id) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&n) },
					func(b *pgx.Batch) { b.Queue(updateN, id, n+1) })
			}},
		}},
		{Name: "claim", Impls: []Impl{
			{PGCC, func(ctx context.Context, e *Env, _ int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					jobs, err := lock.Claim(ctx, tx, e.jobs, 1, lock.OrderBy("id"))
					if err != nil || len(jobs) == 0 {
						return err
					}
					_, err = tx.Exec(ctx, incrementJob, jobs[0].ID)
					return err
				})
			}},
			{PGCCFinal, func(ctx context.Context, e *Env, _ int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					jobs, err := lock.Claim(ctx, tx, e.jobs, 1, lock.OrderBy("id"))
					if err != nil || len(jobs) == 0 {
						return err
					}
					return txn.Final(tx, incrementJob, jobs[0].ID)
				})
			}},
			{PGCCLock, func(ctx context.Context, e *Env, _ int64) error {
				_, err := lock.ClaimAndUpdate(ctx, e.Pool, e.jobs, 1, func(_ context.Context, jobs []Job) error {
					jobs[0].N++
					return nil
				}, lock.OrderBy("id"))
				return err
			}},
			{PGX, func(ctx context.Context, e *Env, _ int64) error {
				return pgxTx(ctx, e.Pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
					var j Job
					if err := tx.QueryRow(ctx, claimJob).Scan(&j.ID, &j.N); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementJob, j.ID)
					return err
				})
			}},
			{PGXPipelined, func(ctx context.Context, e *Env, _ int64) error {
				var j Job
				return pipelined(ctx, e.Pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(claimJob) },
					func(br pgx.BatchResults) error { return br.QueryRow().Scan(&j.ID, &j.N) },
					func(b *pgx.Batch) { b.Queue(incrementJob, j.ID) })
			}},
		}},
		{Name: "advisory", Impls: []Impl{
			{PGCC, func(ctx context.Context, e *Env, id int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := lock.XactLock(ctx, tx, pgcc.AdvisoryKey(id)); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementN, id)
					return err
				})
			}},
			{PGCCFinal, func(ctx context.Context, e *Env, id int64) error {
				return txn.Run(ctx, e.Pool, func(ctx context.Context, tx pgx.Tx) error {
					if err := lock.XactLock(ctx, tx, pgcc.AdvisoryKey(id)); err != nil {
						return err
					}
					return txn.Final(tx, incrementN, id)
				})
			}},
			{PGX, func(ctx context.Context, e *Env, id int64) error {
				return pgxTx(ctx, e.Pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, advisoryLock, id); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, incrementN, id)
					return err
				})
			}},
			{PGXPipelined, func(ctx context.Context, e *Env, id int64) error {
				return pipelined(ctx, e.Pool, pgx.TxOptions{},
					func(b *pgx.Batch) { b.Queue(advisoryLock, id) },
					func(br pgx.BatchResults) error { _, err := br.Exec(); return err },
					func(b *pgx.Batch) { b.Queue(incrementN, id) })
			}},
		}},
		{Name: "modify-pool", Impls: []Impl{
			{PGCC, func(ctx context.Context, e *Env, id int64) error {
				_, err := e.accounts.Modify(ctx, e.Pool, pgcc.Key{id}, func(_ context.Context, a *Account) error {
					a.N++
					return nil
				}, txn.WithMaxAttempts(100))
				return err
			}},
			{PGX, func(ctx context.Context, e *Env, id int64) error {
				for {
					var n, v int64
					if err := e.Pool.QueryRow(ctx, selectVersioned, id).Scan(&n, &v); err != nil {
						return err
					}
					tag, err := e.Pool.Exec(ctx, updateVersioned, id, n+1, v)
					if err != nil || tag.RowsAffected() == 1 {
						return err
					}
				}
			}},
		}},
	}
}

// Result is what [Measure] counted.
type Result struct {
	// Ops is the number of operations that succeeded, Errors the number that failed.
	Ops, Errors int64
	// Elapsed is the time the measured operations took, warm-up excluded.
	Elapsed time.Duration
	// Flights is the number of round trips the proxy counted during them.
	Flights int64
	// FirstError is the first failure, if any.
	FirstError error
}

// OpsPerSecond is the throughput of the operations that succeeded.
func (r Result) OpsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// RoundTripsPerOp is the number of round trips per operation, failed ones included.
func (r Result) RoundTripsPerOp() float64 {
	if n := r.Ops + r.Errors; n > 0 {
		return float64(r.Flights) / float64(n)
	}
	return 0
}

// Measure runs op on c goroutines, n operations in all, or for d when n is 0, and counts the round trips p
// saw. A warm-up of four operations per goroutine opens the connections and prepares the statements first;
// the proxy's counters are reset after it, so nothing else may use p meanwhile. Each goroutine picks rows
// with its own random source seeded from seed. ctx bounds the run: when it ends, Measure stops and returns
// its error.
func Measure(ctx context.Context, e *Env, p *faultnet.Proxy, c int, hot bool, op Op, n int64, d time.Duration, seed uint64) (Result, error) {
	if c < 1 || (n < 1 && d <= 0) {
		return Result{}, fmt.Errorf("%w: rttwork.Measure needs c ≥ 1 and a number of operations or a duration", pgcc.ErrInvalidArgument)
	}
	var res Result
	var mu sync.Mutex
	var ops, errs atomic.Int64
	// A run for d checks the time between operations and never cancels one: an operation cut short would
	// close its connection and leave its round trips counted without an operation.
	work := func(limit int64, stop time.Time, next *atomic.Int64) {
		var wg sync.WaitGroup
		for w := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed+uint64(w), 42))
				for ctx.Err() == nil && (limit == 0 || next.Add(1) <= limit) && (stop.IsZero() || time.Now().Before(stop)) {
					id := int64(1)
					if !hot {
						id = r.Int64N(int64(e.rows)) + 1
					}
					err := op(ctx, e, id)
					switch {
					case err == nil:
						ops.Add(1)
					case ctx.Err() != nil:
						// Stopped by the caller: not the operation's failure.
					default:
						errs.Add(1)
						mu.Lock()
						if res.FirstError == nil {
							res.FirstError = err
						}
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
	}
	var warm atomic.Int64
	work(int64(4*c), time.Time{}, &warm)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	ops.Store(0)
	errs.Store(0)
	p.ResetStats()
	var next atomic.Int64
	start := time.Now()
	var stop time.Time
	if n == 0 {
		stop = start.Add(d)
	}
	work(n, stop, &next)
	res.Elapsed = time.Since(start)
	res.Flights = p.Stats().Flights
	res.Ops, res.Errors = ops.Load(), errs.Load()
	return res, ctx.Err()
}
