package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/counter"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Cell is the measurement of one workload × strategy × worker count.
type Cell struct {
	Workload Workload `json:"workload"`
	Strategy Strategy `json:"strategy"`
	Workers  int      `json:"workers"`
	// Clients, when above 1, is the number of independent clients (pool and combiner each) the workers
	// were split over (Config.Clients); 0 for an ordinary cell.
	Clients int `json:"clients,omitempty"`
	// Ops is the number of operations that committed (Rejected of them changed nothing: a sold-out item).
	Ops      int64 `json:"ops"`
	Rejected int64 `json:"rejected,omitempty"`
	// Seconds is the cell's wall time, Goodput committed operations per second.
	Seconds float64 `json:"seconds"`
	Goodput float64 `json:"goodput_ops_per_s"`
	// Attempts counts every try, the committed ones included; AttemptsPerOp = Attempts / Ops.
	Attempts      int64   `json:"attempts"`
	AttemptsPerOp float64 `json:"attempts_per_op"`
	// Retries counts the retried failures by kind (conflict, serialization_failure, deadlock_detected,
	// lock_not_available).
	Retries map[string]int64 `json:"retries,omitempty"`
	// Errors counts the operations that failed for good, by kind, with one message as a sample.
	Errors      map[string]int64 `json:"errors,omitempty"`
	ErrorSample string           `json:"error_sample,omitempty"`
	// Latency percentiles of committed operations, retries included, in milliseconds.
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	// Invariant names what is checked and Violations how far the final state is from what the committed
	// operations imply: lost increments, units of balance or stock gone astray, extra job runs. It must be 0
	// for every pgcc strategy.
	Invariant  string `json:"invariant"`
	Violations int64  `json:"violations"`
	// HotKeys are the rows with the most contention (Config.HotKeys of them), and AttemptsHistogram[n] the
	// number of operations that made n attempts, both gathered through the pgcc.Observer hooks; empty for the
	// naive strategy, which attaches none.
	HotKeys           []HotKey `json:"hot_keys,omitempty"`
	AttemptsHistogram []int64  `json:"attempts_histogram,omitempty"`
	// Pgbench is the equivalent pgbench script's result, when pgbench ran.
	Pgbench *PgbenchResult `json:"pgbench,omitempty"`
}

// invariantName says what Violations counts for each workload.
func invariantName(w Workload) string {
	switch w {
	case Bank:
		return "balance units misplaced"
	case Inventory:
		return "units oversold"
	case Queue:
		return "jobs run more than once"
	default:
		return "lost updates"
	}
}

// item is a row of the row workloads' table.
type item struct {
	ID      int64 `db:"id"`
	Value   int64 `db:"value"`
	Version int64 `db:"version"`
}

// job is a row of the queue workload's table.
type job struct {
	ID      int64  `db:"id"`
	Status  string `db:"status"`
	Claims  int64  `db:"claims"`
	Version int64  `db:"version"`
}

// env is what the strategies share during a run.
type env struct {
	cfg    Config
	pool   *pgxpool.Pool
	schema string
	items  *repo.Table[item]
	jobs   *repo.Table[job]
	// combiner combines the changes of the Combined strategy; counters holds the Slotted strategy's
	// counters, one per row id, named by it.
	combiner *repo.Combiner[item]
	counters *counter.Counter
	// advisoryNS namespaces the advisory keys of this run.
	advisoryNS string
	sql        statements
	// obs is attached to every transaction and table of the strategies; reset for each cell.
	obs *observer
}

// statements are the hand-written statements of the naive and serializable strategies and of the checks.
type statements struct {
	selectValues, updateValue                string
	nextJob, finishJob, sumItems, countExtra string
}

func newEnv(cfg Config, pool *pgxpool.Pool, schema string) (*env, error) {
	obs := newObserver()
	items, err := repo.NewTable[item]("items", repo.InSchema(schema), repo.WithObserver(obs))
	if err != nil {
		return nil, err
	}
	jobs, err := repo.NewTable[job]("jobs", repo.InSchema(schema), repo.WithObserver(obs))
	if err != nil {
		return nil, err
	}
	combiner, err := items.Combine(pool)
	if err != nil {
		return nil, err
	}
	counters, err := counter.New("counters", counter.InSchema(schema), counter.WithSlots(16))
	if err != nil {
		return nil, err
	}
	it := pgx.Identifier{schema, "items"}.Sanitize()
	jb := pgx.Identifier{schema, "jobs"}.Sanitize()
	return &env{
		cfg: cfg, pool: pool, schema: schema, items: items, jobs: jobs, combiner: combiner, counters: counters, obs: obs,
		advisoryNS: "pgcc-bench/" + schema,
		sql: statements{
			selectValues: `SELECT id, value FROM ` + it + ` WHERE id = ANY($1)`,
			updateValue:  `UPDATE ` + it + ` SET value = $2, version = version + 1 WHERE id = $1`,
			nextJob:      `SELECT id FROM ` + jb + ` WHERE status = 'new' ORDER BY id LIMIT 1`,
			finishJob:    `UPDATE ` + jb + ` SET status = 'done', claims = claims + 1, version = version + 1 WHERE id = $1`,
			sumItems:     `SELECT id, value FROM ` + it + ` ORDER BY id`,
			countExtra:   `SELECT coalesce(sum(claims - 1) FILTER (WHERE claims > 1), 0) FROM ` + jb,
		},
	}, nil
}

// change is one operation of a row workload: the rows it touches and what it does to their values.
type change struct {
	keys []int64
	// apply returns the deltas to add to the values read (in keys order), or false when the operation is
	// rejected (not enough stock).
	apply func(values []int64) (deltas []int64, ok bool)
}

// chooser draws the operations of one worker.
type chooser struct {
	w    Workload
	rows int
	r    *mrand.Rand
	z    *mrand.Zipf
}

func newChooser(cfg Config, w Workload, worker int) *chooser {
	r := mrand.New(mrand.NewPCG(cfg.Seed, uint64(worker)+1))
	return &chooser{w: w, rows: cfg.Rows, r: r, z: mrand.NewZipf(r, cfg.Skew, 1, uint64(cfg.Rows-1))}
}

func plusOne([]int64) ([]int64, bool) { return []int64{1}, true }

func (c *chooser) next() change {
	switch c.w {
	case Hot:
		return change{keys: []int64{1}, apply: plusOne}
	case Uniform:
		return change{keys: []int64{c.r.Int64N(int64(c.rows)) + 1}, apply: plusOne}
	case Zipf:
		return change{keys: []int64{int64(c.z.Uint64()) + 1}, apply: plusOne}
	case Bank:
		a := c.r.Int64N(int64(c.rows)) + 1
		b := c.r.Int64N(int64(c.rows)-1) + 1
		if b >= a {
			b++
		}
		amount := c.r.Int64N(10) + 1
		return change{keys: []int64{a, b}, apply: func([]int64) ([]int64, bool) { return []int64{-amount, amount}, true }}
	case Inventory:
		return change{keys: []int64{int64(c.z.Uint64()) + 1}, apply: func(v []int64) ([]int64, bool) {
			if v[0] < 1 {
				return nil, false
			}
			return []int64{-1}, true
		}}
	}
	panic("bench: no row change for workload " + string(c.w))
}

// errQueueEmpty ends a queue worker.
var errQueueEmpty = errors.New("queue empty")

// errRejected reports an operation that committed without changing anything.
var errRejected = errors.New("rejected")

// opStats is one worker's tally.
type opStats struct {
	committed, rejected, attempts int64
	// retried counts every retry; retries splits them by kind.
	retried         int64
	retries, errors map[string]int64
	sample          string
	latencies       []time.Duration
	// writes counts the committed operations per row key.
	writes map[int64]int64
}

func (s *opStats) retry(err error) {
	s.retried++
	s.retries[kind(err)]++
}

// kind names an error for the report.
func kind(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgcc.ErrRetriesExhausted):
		return "retries_exhausted"
	case errors.Is(err, pgcc.ErrCommitUnknown):
		return "commit_unknown"
	case errors.Is(err, pgcc.ErrConflict):
		return "conflict"
	case errors.Is(err, pgcc.ErrLockNotAvailable):
		return "lock_not_available"
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case pgerrcode.SerializationFailure:
			return "serialization_failure"
		case pgerrcode.DeadlockDetected:
			return "deadlock_detected"
		case pgerrcode.LockNotAvailable:
			return "lock_not_available"
		}
		return "sqlstate_" + pgErr.Code
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "cancelled"
	}
	return "other"
}

// retryOptions is the retry policy of the retrying strategies, reporting each retry to s.
func (e *env) retryOptions(s *opStats, extra ...txn.Option) []txn.Option {
	return append([]txn.Option{
		txn.WithMaxAttempts(e.cfg.MaxAttempts),
		txn.WithBackoff(txn.Backoff{Base: e.cfg.BackoffBase, Cap: e.cfg.BackoffCap}),
		txn.OnRetry(func(_ int, err error, _ time.Duration) { s.attempts++; s.retry(err) }),
		txn.WithObserver(e.obs),
	}, extra...)
}

// think holds the operation between its read and its write.
func (e *env) think(ctx context.Context) error {
	if e.cfg.Think <= 0 {
		return nil
	}
	t := time.NewTimer(e.cfg.Think)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newSchemaName returns a fresh scratch schema name.
func newSchemaName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "pgcc_bench_" + hex.EncodeToString(b[:])
}

// setup creates the scratch schema and its tables.
func setup(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	s := pgx.Identifier{schema}.Sanitize()
	_, err := pool.Exec(ctx, `CREATE SCHEMA `+s+`;
CREATE TABLE `+s+`.items (id bigint PRIMARY KEY, value bigint NOT NULL, version bigint NOT NULL DEFAULT 1);
CREATE TABLE `+s+`.jobs (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new', claims bigint NOT NULL DEFAULT 0,
                          version bigint NOT NULL DEFAULT 1);
CREATE TABLE `+s+`.counters (name text NOT NULL, slot int NOT NULL, value bigint NOT NULL, PRIMARY KEY (name, slot))`)
	if err != nil {
		return fmt.Errorf("pgcc bench: create scratch schema %s: %w", schema, err)
	}
	return nil
}

// teardown drops the scratch schema, even when ctx has ended.
func teardown(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	return err
}

// reset fills the tables for a cell of workload w.
func (e *env) reset(ctx context.Context, w Workload) (initial int64, err error) {
	s := pgx.Identifier{e.schema}.Sanitize()
	rows := e.cfg.Rows
	initial = e.cfg.Stock
	if w == Hot {
		rows = 1
	}
	if w == Hot || w == Uniform || w == Zipf {
		initial = 0
	}
	_, err = e.pool.Exec(ctx, `TRUNCATE `+s+`.items, `+s+`.jobs, `+s+`.counters`)
	if err == nil {
		if w == Queue {
			_, err = e.pool.Exec(ctx, `INSERT INTO `+s+`.jobs (id) SELECT g FROM generate_series(1, $1::bigint) g`, e.cfg.Rows)
		} else {
			_, err = e.pool.Exec(ctx, `INSERT INTO `+s+`.items (id, value) SELECT g, $2::bigint FROM generate_series(1, $1::bigint) g`, rows, initial)
		}
	}
	if err == nil {
		_, err = e.pool.Exec(ctx, `VACUUM ANALYZE `+s+`.items, `+s+`.jobs`)
	}
	if err != nil {
		return 0, fmt.Errorf("pgcc bench: reset tables: %w", err)
	}
	return initial, nil
}

// clientEnvs returns n copies of e, each with its own pool of conns connections (configured as e's) and its
// own combiner: independent clients, as n processes would be. closeAll closes their pools.
func (e *env) clientEnvs(ctx context.Context, n, conns int) (envs []*env, closeAll func(), err error) {
	closeAll = func() {
		for _, c := range envs {
			c.pool.Close()
		}
	}
	for range n {
		pc := e.pool.Config().Copy()
		pc.MaxConns = int32(conns)
		pc.MinConns = 0
		p, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("pgcc bench: client pool: %w", err)
		}
		c := *e
		c.pool = p
		envs = append(envs, &c)
		if c.combiner, err = e.items.Combine(p); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	return envs, closeAll, nil
}

// runCell runs one cell and checks its invariant. clients above 1 splits the workers over that many
// independent clients (see [Config.Clients]).
func (e *env) runCell(ctx context.Context, w Workload, st Strategy, workers, clients int, progress func(committed, retries int64)) (Cell, error) {
	initial, err := e.reset(ctx, w)
	if err != nil {
		return Cell{}, err
	}
	envs := []*env{e}
	if clients > 1 {
		var closeClients func()
		if envs, closeClients, err = e.clientEnvs(ctx, clients, (workers+clients-1)/clients+2); err != nil {
			return Cell{}, err
		}
		defer closeClients()
	} else {
		clients = 0
	}
	e.obs.reset()
	rowsN := e.cfg.Rows
	if w == Hot {
		rowsN = 1
	}
	expected := make([]atomic.Int64, rowsN)
	var (
		stop      atomic.Bool
		remaining atomic.Int64
		committed atomic.Int64
		retries   atomic.Int64
		wg        sync.WaitGroup
		all       = make([]*opStats, workers)
	)
	remaining.Store(int64(e.cfg.Ops))
	start := time.Now()
	for i := range workers {
		rowOp, queueOp := envs[i%len(envs)].strategy(st)
		s := &opStats{retries: map[string]int64{}, errors: map[string]int64{}, writes: map[int64]int64{}}
		all[i] = s
		ch := newChooser(e.cfg, w, i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				if e.cfg.Ops > 0 && remaining.Add(-1) < 0 {
					return
				}
				before := s.retried
				t0 := time.Now()
				s.attempts++
				var err error
				if w == Queue {
					err = queueOp(ctx, s)
					if errors.Is(err, errQueueEmpty) {
						s.attempts--
						return
					}
				} else {
					c := ch.next()
					var deltas []int64
					deltas, err = rowOp(ctx, s, c)
					if err == nil {
						for j, k := range c.keys {
							expected[k-1].Add(deltas[j])
							s.writes[k]++
						}
					}
				}
				retries.Add(s.retried - before)
				switch {
				case err == nil || errors.Is(err, errRejected):
					if err != nil {
						s.rejected++
					}
					s.committed++
					s.latencies = append(s.latencies, time.Since(t0))
					committed.Add(1)
				case ctx.Err() != nil:
					return
				default:
					k := kind(err)
					s.errors[k]++
					if s.sample == "" {
						s.sample = err.Error()
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		var deadline <-chan time.Time
		if e.cfg.Ops == 0 {
			t := time.NewTimer(e.cfg.Duration)
			defer t.Stop()
			deadline = t.C
		}
		for {
			select {
			case <-done:
				return
			case <-deadline:
				stop.Store(true)
			case <-tick.C:
				if progress != nil {
					progress(committed.Load(), retries.Load())
				}
			}
		}
	}()
	wg.Wait()
	close(done)
	pwg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return Cell{}, err
	}

	cell := Cell{Workload: w, Strategy: st, Workers: workers, Clients: clients, Seconds: elapsed.Seconds(), Invariant: invariantName(w),
		Retries: map[string]int64{}, Errors: map[string]int64{}}
	var lat []time.Duration
	writes := map[int64]int64{}
	for _, s := range all {
		for k, n := range s.writes {
			writes[k] += n
		}
		cell.Ops += s.committed
		cell.Rejected += s.rejected
		cell.Attempts += s.attempts
		for k, v := range s.retries {
			cell.Retries[k] += v
		}
		for k, v := range s.errors {
			cell.Errors[k] += v
		}
		if cell.ErrorSample == "" {
			cell.ErrorSample = s.sample
		}
		lat = append(lat, s.latencies...)
	}
	cell.Goodput = float64(cell.Ops) / elapsed.Seconds()
	if cell.Ops > 0 {
		cell.AttemptsPerOp = float64(cell.Attempts) / float64(cell.Ops)
	}
	cell.HotKeys = e.obs.hotKeys(e.items.Identifier().Sanitize(), writes, e.cfg.HotKeys)
	cell.AttemptsHistogram = e.obs.histogram()
	slices.Sort(lat)
	cell.P50, cell.P95, cell.P99 = pct(lat, 0.50), pct(lat, 0.95), pct(lat, 0.99)
	cell.Violations, err = e.check(ctx, w, st, initial, expected)
	return cell, err
}

// pct returns the p-th percentile of sorted latencies in milliseconds (nearest rank).
func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

// check compares the final state with what the committed operations imply.
func (e *env) check(ctx context.Context, w Workload, st Strategy, initial int64, expected []atomic.Int64) (int64, error) {
	if w == Queue {
		var extra int64
		if err := e.pool.QueryRow(ctx, e.sql.countExtra).Scan(&extra); err != nil {
			return 0, fmt.Errorf("pgcc bench: check queue: %w", err)
		}
		return extra, nil
	}
	sql := e.sql.sumItems
	if st == Slotted {
		// The counters live in the slots; a row never added to has no slot (and its item row stays at 0).
		sql = `SELECT i.id, i.value + coalesce((SELECT sum(c.value) FROM ` + e.counters.Table() + ` c WHERE c.name = i.id::text), 0)::bigint FROM ` +
			pgx.Identifier{e.schema, "items"}.Sanitize() + ` i ORDER BY i.id`
	}
	rows, err := e.pool.Query(ctx, sql)
	if err != nil {
		return 0, fmt.Errorf("pgcc bench: check rows: %w", err)
	}
	var off int64
	var id, value int64
	_, err = pgx.ForEachRow(rows, []any{&id, &value}, func() error {
		d := value - (initial + expected[id-1].Load())
		off += max(d, -d)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("pgcc bench: check rows: %w", err)
	}
	return off, nil
}
