package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// rowOp runs one operation of a row workload and returns the deltas it applied (in c.keys order).
type rowOp func(ctx context.Context, s *opStats, c change) ([]int64, error)

// queueOp processes one job; errQueueEmpty when none is left.
type queueOp func(ctx context.Context, s *opStats) error

// errTaken makes a queue worker pick another job: the one it read was taken meanwhile.
var errTaken = errors.New("job taken by another worker")

func (e *env) strategy(st Strategy) (rowOp, queueOp) {
	switch st {
	case Naive:
		return e.naiveRow, e.naiveQueue
	case Optimistic:
		return e.optimisticRow, e.optimisticQueue
	case Pessimistic:
		return e.lockingRow(false), e.pessimisticQueue
	case NoWait:
		return e.lockingRow(true), e.noWaitQueue
	case Serializable:
		return e.serializableRow, e.serializableQueue
	case Advisory:
		return e.advisoryRow, e.advisoryQueue
	case Combined:
		return e.combinedRow, nil
	case Atomic:
		return e.atomicRow, nil
	case Slotted:
		return e.slottedRow, nil
	}
	panic("bench: unknown strategy " + string(st))
}

// readValues reads the values of keys, in keys order.
func (e *env) readValues(ctx context.Context, db pgcc.DBTX, keys []int64) ([]int64, error) {
	rows, err := db.Query(ctx, e.sql.selectValues, keys)
	if err != nil {
		return nil, err
	}
	got := make(map[int64]int64, len(keys))
	var id, v int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error { got[id] = v; return nil }); err != nil {
		return nil, err
	}
	out := make([]int64, len(keys))
	for i, k := range keys {
		v, ok := got[k]
		if !ok {
			return nil, fmt.Errorf("row %d missing", k)
		}
		out[i] = v
	}
	return out, nil
}

// writeValues writes back values read plus deltas, one UPDATE a row, as hand-written code does.
func (e *env) writeValues(ctx context.Context, db pgcc.DBTX, keys, values, deltas []int64) error {
	for i, k := range keys {
		if _, err := db.Exec(ctx, e.sql.updateValue, k, values[i]+deltas[i]); err != nil {
			return err
		}
	}
	return nil
}

// readApplyWrite is the body shared by the strategies that read and write plainly inside a transaction
// whose protection comes from elsewhere (none, SERIALIZABLE, advisory locks).
func (e *env) readApplyWrite(ctx context.Context, tx pgx.Tx, c change) ([]int64, error) {
	values, err := e.readValues(ctx, tx, c.keys)
	if err != nil {
		return nil, err
	}
	if err := e.think(ctx); err != nil {
		return nil, err
	}
	deltas, ok := c.apply(values)
	if !ok {
		return nil, errRejected
	}
	return deltas, e.writeValues(ctx, tx, c.keys, values, deltas)
}

// naiveRow is the code that loses updates: read, think, write back, in a READ COMMITTED transaction.
func (e *env) naiveRow(ctx context.Context, _ *opStats, c change) ([]int64, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	deltas, err := e.readApplyWrite(ctx, tx, c)
	if err != nil && !errors.Is(err, errRejected) {
		return nil, err
	}
	if cerr := tx.Commit(ctx); cerr != nil {
		return nil, cerr
	}
	return deltas, err
}

func (e *env) serializableRow(ctx context.Context, s *opStats, c change) ([]int64, error) {
	return txn.RunValue(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
		return e.readApplyWrite(ctx, tx, c)
	}, e.retryOptions(s, txn.WithIsolation(pgx.Serializable))...)
}

func (e *env) advisoryRow(ctx context.Context, s *opStats, c change) ([]int64, error) {
	sorted := slices.Sorted(slices.Values(c.keys))
	return txn.RunValue(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
		for _, k := range sorted {
			if err := lock.XactLock(ctx, tx, lock.StringKey(e.advisoryNS, strconv.FormatInt(k, 10))); err != nil {
				return nil, err
			}
		}
		return e.readApplyWrite(ctx, tx, c)
	}, e.retryOptions(s)...)
}

// optimisticRow reads without locking and writes with a version compare-and-swap; on conflict it reloads
// and re-applies. One row goes through repo.Modify, several through txn.Retry around repo.UpdateAll.
func (e *env) optimisticRow(ctx context.Context, s *opStats, c change) ([]int64, error) {
	var deltas []int64
	if len(c.keys) == 1 {
		_, err := e.items.Modify(ctx, e.pool, pgcc.Key{c.keys[0]}, func(ctx context.Context, row *item) error {
			if err := e.think(ctx); err != nil {
				return err
			}
			d, ok := c.apply([]int64{row.Value})
			if !ok {
				return errRejected
			}
			deltas = d
			row.Value += d[0]
			return nil
		}, e.retryOptions(s)...)
		return deltas, err
	}
	err := txn.Retry(ctx, func(ctx context.Context) error {
		rows := make([]*item, len(c.keys))
		values := make([]int64, len(c.keys))
		for i, k := range c.keys {
			r, err := e.items.Get(ctx, e.pool, pgcc.Key{k})
			if err != nil {
				return err
			}
			rows[i], values[i] = &r, r.Value
		}
		if err := e.think(ctx); err != nil {
			return err
		}
		d, ok := c.apply(values)
		if !ok {
			return errRejected
		}
		for i := range rows {
			rows[i].Value += d[i]
		}
		deltas = d
		return e.items.UpdateAll(ctx, e.pool, rows)
	}, e.retryOptions(s, txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) }))...)
	return deltas, err
}

// lockingRow locks the rows in key order (lock.Load), waiting or with NOWAIT, then updates them through repo
// (the version check cannot fail under the lock, and keeps the version column honest for optimistic
// readers).
func (e *env) lockingRow(noWait bool) rowOp {
	return func(ctx context.Context, s *opStats, c change) ([]int64, error) {
		var lopts []lock.Option
		var topts []txn.Option
		if noWait {
			lopts = append(lopts, lock.WithWait(lock.NoWait))
			topts = append(topts, txn.RetryLockNotAvailable())
		}
		keys := make([]pgcc.Key, len(c.keys))
		for i, k := range c.keys {
			keys[i] = pgcc.Key{k}
		}
		return txn.RunValue(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
			rows, err := lock.Load[item](ctx, tx, e.items, keys, lopts...)
			if err != nil {
				return nil, err
			}
			byID := make(map[int64]*item, len(rows))
			for i := range rows {
				byID[rows[i].ID] = &rows[i]
			}
			values := make([]int64, len(c.keys))
			for i, k := range c.keys {
				r, ok := byID[k]
				if !ok {
					return nil, fmt.Errorf("row %d missing", k)
				}
				values[i] = r.Value
			}
			if err := e.think(ctx); err != nil {
				return nil, err
			}
			deltas, ok := c.apply(values)
			if !ok {
				return nil, errRejected
			}
			for i, k := range c.keys {
				r := byID[k]
				r.Value += deltas[i]
				if err := e.items.Update(ctx, tx, r); err != nil {
					return nil, err
				}
			}
			return deltas, nil
		}, e.retryOptions(s, topts...)...)
	}
}

// nextJob returns the lowest job id still new, or errQueueEmpty.
func (e *env) nextJob(ctx context.Context, db pgcc.DBTX) (int64, error) {
	var id int64
	err := db.QueryRow(ctx, e.sql.nextJob).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errQueueEmpty
	}
	return id, err
}

// plainJob takes the next job and finishes it in tx, with whatever protection tx has.
func (e *env) plainJob(ctx context.Context, tx pgx.Tx) error {
	id, err := e.nextJob(ctx, tx)
	if err != nil {
		return err
	}
	if err := e.think(ctx); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, e.sql.finishJob, id)
	return err
}

func (e *env) naiveQueue(ctx context.Context, _ *opStats) error {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := e.plainJob(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (e *env) serializableQueue(ctx context.Context, s *opStats) error {
	return txn.Run(ctx, e.pool, e.plainJob, e.retryOptions(s, txn.WithIsolation(pgx.Serializable))...)
}

func (e *env) advisoryQueue(ctx context.Context, s *opStats) error {
	return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := lock.XactLock(ctx, tx, lock.StringKey(e.advisoryNS, "queue")); err != nil {
			return err
		}
		return e.plainJob(ctx, tx)
	}, e.retryOptions(s)...)
}

// optimisticQueue reads the next job and marks it done with a version compare-and-swap; a worker that lost
// the race picks the next job.
func (e *env) optimisticQueue(ctx context.Context, s *opStats) error {
	return txn.Retry(ctx, func(ctx context.Context) error {
		id, err := e.nextJob(ctx, e.pool)
		if err != nil {
			return err
		}
		j, err := e.jobs.Get(ctx, e.pool, pgcc.Key{id})
		if err != nil {
			return err
		}
		if j.Status != "new" {
			return errTaken
		}
		if err := e.think(ctx); err != nil {
			return err
		}
		j.Status, j.Claims = "done", j.Claims+1
		return e.jobs.Update(ctx, e.pool, &j)
	}, e.retryOptions(s, txn.RetryIf(func(err error) bool {
		return errors.Is(err, pgcc.ErrConflict) || errors.Is(err, errTaken)
	}))...)
}

// pessimisticQueue claims the next job nobody holds with SKIP LOCKED: workers never wait for each other.
func (e *env) pessimisticQueue(ctx context.Context, s *opStats) error {
	return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
		jobs, err := lock.Claim[job](ctx, tx, e.jobs, 1, lock.Where(`status = 'new'`))
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return errQueueEmpty
		}
		if err := e.think(ctx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, e.sql.finishJob, jobs[0].ID)
		return err
	}, e.retryOptions(s)...)
}

// noWaitQueue locks the next job with NOWAIT; when another worker holds it, the transaction is retried.
func (e *env) noWaitQueue(ctx context.Context, s *opStats) error {
	return txn.Run(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
		id, err := e.nextJob(ctx, tx)
		if err != nil {
			return err
		}
		jobs, err := lock.Load[job](ctx, tx, e.jobs, []pgcc.Key{{id}}, lock.WithWait(lock.NoWait))
		if err != nil {
			return err
		}
		if len(jobs) == 0 || jobs[0].Status != "new" {
			return errTaken
		}
		if err := e.think(ctx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, e.sql.finishJob, id)
		return err
	}, e.retryOptions(s, txn.RetryLockNotAvailable(), txn.RetryIf(func(err error) bool {
		return txn.Retryable(err) || errors.Is(err, pgcc.ErrLockNotAvailable) || errors.Is(err, errTaken)
	}))...)
}

// combinedRow changes one row through the process's Combiner: concurrent changes of the row are applied in
// one transaction.
func (e *env) combinedRow(ctx context.Context, _ *opStats, c change) ([]int64, error) {
	if len(c.keys) != 1 {
		return nil, fmt.Errorf("combined: %d rows per change", len(c.keys))
	}
	var deltas []int64
	_, err := e.combiner.Modify(ctx, pgcc.Key{c.keys[0]}, func(ctx context.Context, row *item) error {
		if err := e.think(ctx); err != nil {
			return err
		}
		d, ok := c.apply([]int64{row.Value})
		if !ok {
			return errRejected
		}
		deltas = d
		row.Value += d[0]
		return nil
	})
	return deltas, err
}

// atomicRow adds each delta in one guarded UPDATE without reading: the stock may not go below zero. The
// delta is decided without the row (+1, -1, a transfer amount); inventory's "stock allows" is the guard.
func (e *env) atomicRow(ctx context.Context, s *opStats, c change) ([]int64, error) {
	deltas, ok := c.apply(make([]int64, len(c.keys)))
	if !ok && len(c.keys) == 1 {
		deltas, ok = []int64{-1}, true // inventory: the guard decides, not a read
	}
	if !ok {
		return nil, errRejected
	}
	if len(c.keys) == 1 {
		var guards []repo.Guard
		if deltas[0] < 0 {
			guards = append(guards, repo.AtLeast(0))
		}
		_, err := e.items.Add(ctx, e.pool, pgcc.Key{c.keys[0]}, "value", deltas[0], guards...)
		if errors.Is(err, pgcc.ErrGuardFailed) {
			return nil, errRejected
		}
		return deltas, err
	}
	order := make([]int, len(c.keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(c.keys[a] - c.keys[b]) })
	return txn.RunValue(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
		for _, i := range order {
			if _, err := e.items.Add(ctx, tx, pgcc.Key{c.keys[i]}, "value", deltas[i]); err != nil {
				return nil, err
			}
		}
		return deltas, nil
	}, e.retryOptions(s)...)
}

// slottedRow adds to the counter of the row's id, in a random slot.
func (e *env) slottedRow(ctx context.Context, _ *opStats, c change) ([]int64, error) {
	deltas, ok := c.apply(make([]int64, len(c.keys)))
	if !ok || len(c.keys) != 1 {
		return nil, fmt.Errorf("slotted: not a counter change")
	}
	return deltas, e.counters.Add(ctx, e.pool, strconv.FormatInt(c.keys[0], 10), deltas[0])
}
