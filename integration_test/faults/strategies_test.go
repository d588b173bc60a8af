package faults_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/txn"
)

// strategies are the ways a service makes a transfer safe under concurrency, each as the library's docs show.
var strategies = []strategy{
	{"optimistic", optimistic},
	{"pessimistic", pessimistic},
	{"nowait", nowait},
	{"serializable", serializable},
	{"advisory", advisory},
	{"skiplocked", skipLocked},
	{"lease", leaseGuarded},
}

// optimistic: repo.Modify's version compare-and-swap on each account inside txn.Run, the source first (its
// balance decides the amount), then the destination; a conflict inside the transaction re-reads the row, and
// a deadlock between two opposite transfers is retried by txn.Run.
func optimistic(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		var amount int64
		if _, err := accounts.Modify(ctx, tx, pgcc.Key{tr.from}, func(_ context.Context, a *Account) error {
			amount = min(tr.amount, a.Balance)
			a.Balance -= amount
			return nil
		}); err != nil {
			return err
		}
		if _, err := accounts.Modify(ctx, tx, pgcc.Key{tr.to}, func(_ context.Context, a *Account) error {
			a.Balance += amount
			return nil
		}); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO ledger (op, from_id, to_id, amount) VALUES ($1, $2, $3, $4)", tr.op, tr.from, tr.to, amount)
		return err
	}, tr.opts(txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) || txn.Retryable(err) }))...)
}

// pessimistic: both rows locked FOR UPDATE (lock.Load locks in key order), then updated.
func pessimistic(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{tr.from}, {tr.to}})
		if err != nil {
			return err
		}
		return apply(ctx, tx, tr, rows[0].Balance)
	}, tr.opts()...)
}

// nowait: the same locks taken NOWAIT; a lock held elsewhere fails at once and the transaction is retried
// after a backoff.
func nowait(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	opts := []txn.Option{txn.RetryLockNotAvailable(), txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 20 * time.Millisecond})}
	if !tr.keyed {
		opts = append(opts, txn.WithMaxAttempts(100))
	}
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{tr.from}, {tr.to}}, lock.WithWait(lock.NoWait))
		if err != nil {
			return err
		}
		return apply(ctx, tx, tr, rows[0].Balance)
	}, tr.opts(opts...)...)
}

// serializable: plain reads and writes at SERIALIZABLE; PostgreSQL's 40001 is retried by txn.Run.
func serializable(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		var balance int64
		if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", tr.from).Scan(&balance); err != nil {
			return err
		}
		return apply(ctx, tx, tr, balance)
	}, tr.opts(txn.WithIsolation(pgx.Serializable))...)
}

// advisory: a transaction-scoped advisory lock per account, taken in key order, then plain reads and writes.
func advisory(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		first, second := tr.from, tr.to
		if first > second {
			first, second = second, first
		}
		for _, id := range []int64{first, second} {
			if err := lock.XactLock(ctx, tx, pgcc.AdvisoryKey(0x66617500+id)); err != nil {
				return err
			}
		}
		var balance int64
		if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", tr.from).Scan(&balance); err != nil {
			return err
		}
		return apply(ctx, tx, tr, balance)
	}, tr.opts()...)
}

// Job is a row of jobs, the work queue of skipLocked.
type Job struct {
	ID   int64 `db:"id"`
	Done bool  `db:"done"`
}

var jobs = must(lock.NewTable[Job]("jobs"))

// skipLocked: a worker claims one job of the queue with FOR UPDATE SKIP LOCKED (lock.Claim), does the
// transfer as the job's work, and puts the job back for the next worker, all in one transaction: the job's
// row lock is what keeps two workers off the same job, and the accounts are locked in key order.
func skipLocked(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		claimed, err := lock.Claim(ctx, tx, jobs, 1)
		if err != nil {
			return err
		}
		if len(claimed) == 0 { // every job is taken: a definite, documented failure the caller may retry
			return fmt.Errorf("%w: every job is claimed", pgcc.ErrLockNotAvailable)
		}
		rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{tr.from}, {tr.to}})
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE jobs SET done = NOT done WHERE id = $1", claimed[0].ID); err != nil {
			return err
		}
		return apply(ctx, tx, tr, rows[0].Balance)
	}, tr.opts()...)
}

// leaseTTL is the time-to-live of the leases of leaseGuarded: a holder that vanished (a lost connection, a
// COMMIT whose reply never came) blocks its account for at most this long.
const leaseTTL = 2 * time.Second

// leaseGuarded: the source account is owned through a lease (lease.Leases.Acquire, waiting while another
// transfer holds it), and the transfer's transaction checks the lease's fencing token with lease.Guard before
// it debits; the credit is a relative update that needs no owner. The lease is released afterwards; a release
// that fails leaves it to expire.
func leaseGuarded(ctx context.Context, pool *pgxpool.Pool, tr transfer) error {
	leases := lease.New(pool)
	name := fmt.Sprintf("faults-account-%d", tr.from)
	l, err := leases.Acquire(ctx, name, tr.op, leaseTTL)
	if err != nil {
		if errors.Is(err, pgcc.ErrCommitUnknown) {
			// Whether a lease was granted is unknown, but the transfer certainly did not run: report that.
			if ctx.Err() != nil {
				return fmt.Errorf("no lease, so no transfer: %w (%v)", ctx.Err(), err)
			}
			return fmt.Errorf("%w: no lease, so no transfer (%v)", pgcc.ErrConnectionLost, err)
		}
		return err
	}
	defer func() {
		// Bounded like the rest of the call: a release that cannot finish leaves the lease to expire.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 50*time.Millisecond)
		defer cancel()
		_ = l.Release(rctx)
	}()
	return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := lease.Guard(ctx, tx, name, l.Token); err != nil {
			return err
		}
		var balance int64
		if err := tx.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = $1", tr.from).Scan(&balance); err != nil {
			return err
		}
		return apply(ctx, tx, tr, balance)
	}, tr.opts()...)
}
