package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// Defaults of a [Combiner].
const (
	// DefaultMaxBatch is the most calls one combined transaction applies, unless [WithMaxBatch] says
	// otherwise.
	DefaultMaxBatch = 256
	// DefaultBatchTimeout bounds one combined transaction, its retries included, unless [WithBatchTimeout]
	// says otherwise.
	DefaultBatchTimeout = 10 * time.Second
)

// CombineOption configures [Table.Combine].
type CombineOption func(*combineConfig)

type combineConfig struct {
	maxBatch int
	timeout  time.Duration
	txOpts   []txn.Option
	invalid  []string
}

// WithMaxBatch bounds how many calls one transaction of a [Combiner] applies; callers beyond it wait for
// the next transaction. n must be at least 1 (1 turns combining off: one transaction per call, still one at
// a time per key in the process).
func WithMaxBatch(n int) CombineOption {
	return func(c *combineConfig) {
		if n < 1 {
			c.invalid = append(c.invalid, fmt.Sprintf("WithMaxBatch(%d): need at least 1", n))
			return
		}
		c.maxBatch = n
	}
}

// WithBatchTimeout bounds one transaction of a [Combiner], its retries included. A batch runs on a context
// of its own, detached from the cancellation of the caller that happens to lead it (so that one caller
// leaving does not fail the others), and ended by this timeout. d must be positive.
func WithBatchTimeout(d time.Duration) CombineOption {
	return func(c *combineConfig) {
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("WithBatchTimeout(%v): need a positive duration", d))
			return
		}
		c.timeout = d
	}
}

// WithBatchTxOptions passes opts to the [txn.Run] of each batch: isolation, retry policy, lock timeout. The
// default is txn.Run's own: READ COMMITTED, serialization failures, deadlocks and lost connections retried.
func WithBatchTxOptions(opts ...txn.Option) CombineOption {
	return func(c *combineConfig) { c.txOpts = append(c.txOpts, opts...) }
}

// Combiner combines concurrent read-modify-writes of one row made in this process into one transaction.
// Make one with [Table.Combine], once per table and pool, and share it: combining happens between calls to
// the same Combiner. It starts no goroutine (a batch runs on the goroutine of one of its callers), holds no
// connection between calls, and needs no Close. It is safe for concurrent use.
type Combiner[T any] struct {
	t    *Table[T]
	db   pgcc.Beginner
	cfg  combineConfig
	read string // the table's Get, locking the row

	mu     sync.Mutex
	queues map[string]*combineQueue[T] // by key; present while a caller leads a batch of that key
}

// combineQueue is the callers of one key waiting for the batch being led to end.
type combineQueue[T any] struct {
	waiting []*combineCall[T]
}

// combineCall is one caller of Combiner.Modify.
type combineCall[T any] struct {
	ctx context.Context
	fn  func(ctx context.Context, row *T) error
	// done receives true when the caller is to lead the next batch, false when its result is set.
	done chan bool

	row      T
	err      error
	applied  bool
	panicked bool
	panicVal any
}

// Combine returns a [Combiner] of rows of t on db, which must be a pool or a connection (not a pgx.Tx: each
// batch is a transaction of its own). opts: [WithMaxBatch], [WithBatchTimeout], [WithBatchTxOptions]. A nil
// table or handle, or an invalid option, is an error matching [pgcc.ErrInvalidArgument].
func (t *Table[T]) Combine(db pgcc.Beginner, opts ...CombineOption) (*Combiner[T], error) {
	if t == nil {
		return nil, errNilTable("Combine")
	}
	if isNil(db) {
		return nil, fmt.Errorf("%w: Combine of %s: the database handle is nil", pgcc.ErrInvalidArgument, t.quoted)
	}
	if _, ok := db.(pgx.Tx); ok {
		return nil, fmt.Errorf("%w: Combine of %s: db is a pgx.Tx; a Combiner runs transactions of its own on a pool or connection", pgcc.ErrInvalidArgument, t.quoted)
	}
	cfg := combineConfig{maxBatch: DefaultMaxBatch, timeout: DefaultBatchTimeout}
	for _, o := range opts {
		if o == nil {
			cfg.invalid = append(cfg.invalid, "a nil CombineOption")
			continue
		}
		o(&cfg)
	}
	if len(cfg.invalid) > 0 {
		return nil, fmt.Errorf("%w: Combine of %s: %s", pgcc.ErrInvalidArgument, t.quoted, strings.Join(cfg.invalid, "; "))
	}
	return &Combiner[T]{t: t, db: db, cfg: cfg, read: t.sql.get + " FOR NO KEY UPDATE", queues: make(map[string]*combineQueue[T])}, nil
}

// Modify is a read-modify-write of the row with key, like [Table.Modify], combined with the concurrent
// Modify calls of the same key on this Combiner: while one transaction on the key runs, the calls that arrive
// queue, and the next transaction applies up to the batch size of them at once. That transaction reads the
// row once, locking it (SELECT … FOR NO KEY UPDATE), calls each caller's fn in arrival order on the row as
// the previous fn left it, writes the result once with a version compare-and-swap ([Table.Update]), and
// commits once. Throughput on a hot row is so no longer bounded by one commit per change. The row lock makes
// it correct across processes: Combiners in several processes, and any other writer, take turns on the row.
//
// fn gets the caller's own ctx and a copy of the row; it may change any field but the key. When fn returns
// an error (or panics, or changes the key), its changes are discarded, the caller gets its error (or the
// panic, re-raised in the caller's goroutine) and the batch goes on without it. A batch that fails as a
// whole (a serialization failure or deadlock, or a lost connection before COMMIT: retried by [txn.Run], which
// calls every fn again on a fresh read, so fn must be safe to call more than once; or a missing row, or
// retries exhausted) gives its error to every caller whose fn succeeded. A COMMIT without an answer is a
// [*pgcc.CommitUnknownError] for each of them: the changes may have been applied.
//
// Modify returns the row as the caller's fn left it, with the version the batch wrote: later callers of the
// batch may have changed the row since, and the version is that of the row after the whole batch.
//
// ctx is honoured while the caller waits in the queue: when it ends there, Modify returns ctx.Err() and
// nothing is applied for it. Once its batch has started, the caller waits for the batch's outcome (bounded by
// [WithBatchTimeout]); a fn reached after ctx ended is skipped with ctx.Err(). The batch's statements run on a
// context of their own, which is not cancelled when the leading caller's ctx ends.
func (c *Combiner[T]) Modify(ctx context.Context, key pgcc.Key, fn func(ctx context.Context, row *T) error) (T, error) {
	var zero T
	if c == nil {
		return zero, fmt.Errorf("%w: Modify on a nil *repo.Combiner", pgcc.ErrInvalidArgument)
	}
	if fn == nil {
		return zero, fmt.Errorf("%w: combined Modify of %s needs a function", pgcc.ErrInvalidArgument, c.t.quoted)
	}
	if err := c.t.checkKey("Modify", key); err != nil {
		return zero, err
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	k := keyString(key)
	call := &combineCall[T]{ctx: ctx, fn: fn, done: make(chan bool, 1)}
	c.mu.Lock()
	q, busy := c.queues[k]
	if !busy {
		q = &combineQueue[T]{}
		c.queues[k] = q
		c.mu.Unlock()
		return c.lead(k, key, q, call)
	}
	q.waiting = append(q.waiting, call)
	c.mu.Unlock()

	var lead bool
	select {
	case lead = <-call.done:
	case <-ctx.Done():
		c.mu.Lock()
		if i := slices.Index(q.waiting, call); i >= 0 {
			q.waiting = slices.Delete(q.waiting, i, i+1)
			c.mu.Unlock()
			return zero, ctx.Err()
		}
		c.mu.Unlock()
		lead = <-call.done // taken into a batch, or made leader, already: wait for it
	}
	if lead {
		return c.lead(k, key, q, call)
	}
	return call.result()
}

// result returns what the batch decided for the call, re-raising its fn's panic.
func (call *combineCall[T]) result() (T, error) {
	if call.panicked {
		panic(call.panicVal)
	}
	if call.err != nil {
		var zero T
		return zero, call.err
	}
	return call.row, nil
}

// lead runs one batch whose first call is own, answers the other calls of the batch, then hands the key on:
// to the first caller still waiting, who leads the next batch, or, with nobody waiting, back to nobody.
func (c *Combiner[T]) lead(k string, key pgcc.Key, q *combineQueue[T], own *combineCall[T]) (T, error) {
	c.mu.Lock()
	n := min(len(q.waiting), c.cfg.maxBatch-1)
	batch := make([]*combineCall[T], 0, n+1)
	batch = append(append(batch, own), q.waiting[:n]...)
	q.waiting = slices.Delete(q.waiting, 0, n)
	c.mu.Unlock()

	c.run(own.ctx, key, batch)
	for _, call := range batch[1:] {
		call.done <- false
	}

	c.mu.Lock()
	if len(q.waiting) == 0 {
		delete(c.queues, k)
		c.mu.Unlock()
	} else {
		next := q.waiting[0]
		q.waiting = slices.Delete(q.waiting, 0, 1)
		c.mu.Unlock()
		next.done <- true
	}
	return own.result()
}

// run applies batch in one transaction and sets each call's outcome.
func (c *Combiner[T]) run(ctx context.Context, key pgcc.Key, batch []*combineCall[T]) {
	t := c.t
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.timeout)
	defer cancel()
	err := txn.Run(ctx, c.db, func(ctx context.Context, tx pgx.Tx) error {
		var cur T
		cv := reflect.ValueOf(&cur).Elem()
		if err := t.scanRow(cv, tx.QueryRow(ctx, c.read, []any(key)...)); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return &pgcc.NotFoundError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: slices.Clone(key)}
			}
			return fmt.Errorf("pgcc: combined modify of %s %s: reading the row: %w", t.quoted, pgcc.FormatKey(t.keyCols, key), err)
		}
		t.track(cv)
		readKey := t.keyValues(cv)
		changed := false
		for _, call := range batch {
			var zero T
			call.row, call.err, call.applied, call.panicked, call.panicVal = zero, nil, false, false, nil
			if err := call.ctx.Err(); err != nil {
				call.err = err
				continue
			}
			next := cur
			if err := call.apply(&next); err != nil || call.panicked {
				call.err = err
				continue
			}
			if !slices.EqualFunc(readKey, t.keyValues(reflect.ValueOf(&next).Elem()), sameValue) {
				call.err = fmt.Errorf("%w: combined modify of %s %s: fn changed the row's key", pgcc.ErrInvalidArgument, t.quoted, pgcc.FormatKey(t.keyCols, key))
				continue
			}
			cur, call.row, call.applied = next, next, true
			changed = true
		}
		if !changed {
			return nil
		}
		if last := txn.Last(tx); t.deferrable(last) != nil {
			// The batch's one write travels with COMMIT: BEGIN with the read, the write with COMMIT, two
			// round trips for the whole batch. The row is locked, so the version check cannot fail but for a
			// writer that ignores the lock; it is a conflict then, and Run runs the batch again.
			t.queueFinal(last, t.deferrable(last), &cur, pgcc.OpUpdate, t.sql.finalUpdate, t.sql.updateSet, true, false, true)
		} else {
			written, expected, err := t.send(ctx, tx, &cur, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, writeMode{check: true, bumps: true})
			if err != nil {
				return err
			}
			if !written { // cannot happen under the row lock, unless another writer ignores it
				actual, found, err := t.probe(ctx, tx, []any(key))
				if err != nil {
					return err
				}
				return t.conflict(pgcc.OpUpdate, cv, expected, actual, found)
			}
		}
		ver := t.versionValue(cv.FieldByIndex(t.version.index))
		for _, call := range batch {
			if call.applied {
				t.setVersion(reflect.ValueOf(&call.row).Elem().FieldByIndex(t.version.index), ver)
			}
		}
		return nil
	}, c.cfg.txOpts...)
	if err != nil {
		for _, call := range batch {
			if call.applied || call.err == nil && !call.panicked {
				call.err, call.applied = err, false
			}
		}
	}
}

// apply calls the call's fn on row, turning a panic into the call's outcome.
func (call *combineCall[T]) apply(row *T) (err error) {
	defer func() {
		if p := recover(); p != nil {
			call.panicked, call.panicVal = true, p
		}
	}()
	return call.fn(call.ctx, row)
}

// scanRow scans a row selected with the table's select list into v (a T).
func (t *Table[T]) scanRow(v reflect.Value, row pgx.Row) error {
	dest := make([]any, len(t.fields))
	for i, f := range t.fields {
		dest[i] = v.FieldByIndex(f.index).Addr().Interface()
	}
	return row.Scan(dest...)
}

// keyString is key as a map key: each value's type and value, strings quoted so that no two keys collide.
func keyString(key pgcc.Key) string {
	var b strings.Builder
	for _, v := range key {
		fmt.Fprintf(&b, "%T:", v)
		if s, ok := v.(string); ok {
			b.WriteString(strconv.Quote(s))
		} else {
			fmt.Fprintf(&b, "%#v", v)
		}
		b.WriteByte(0)
	}
	return b.String()
}
