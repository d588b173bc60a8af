package txn

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// finalWrite is a statement queued by [Final].
type finalWrite struct {
	sql  string
	args []any
}

// Final queues a write to be sent with COMMIT, in the same round trip, once fn has returned nil: the
// transaction's last statement then costs no round trip of its own, and on a hot row the row lock it takes
// is held for no round trip at all. tx must be the pgx.Tx that [Run] gave its function (not a savepoint's);
// otherwise the error matches [pgcc.ErrInvalidArgument]. Writes queued by several calls are sent in order.
// Nothing is sent when fn returns an error.
//
// A final write must need no answer of its own: Run does not return its command tag or rows, and a write
// that matches no row is not an error. A condition it must meet has to be one PostgreSQL enforces (a
// constraint, a lock timeout, a serialization failure): a final write that fails makes the server skip
// COMMIT, nothing of the transaction is committed, and Run handles the error as any error of fn's (retrying
// what [Retryable] or [RetryIf] accepts, returning it otherwise, with the *pgconn.PgError, its table,
// constraint and detail, in its chain). When the connection fails once the flight was sent, the outcome is
// unknown: Run returns a [*pgcc.CommitUnknownError], never success and never a certain failure.
//
// The write travels with COMMIT when Run holds the connection itself (a pool or a single connection, without
// an idempotency key); otherwise it is sent just before COMMIT, with the same outcome.
func Final(tx pgx.Tx, sql string, args ...any) error {
	m, err := managedOf(tx, "Final")
	if err != nil {
		return err
	}
	if m.top == nil {
		return fmt.Errorf("%w: Final needs the transaction txn.Run began, not a savepoint or a transaction begun elsewhere", pgcc.ErrInvalidArgument)
	}
	if sql == "" {
		return fmt.Errorf("%w: Final needs a statement", pgcc.ErrInvalidArgument)
	}
	m.final = append(m.final, finalWrite{sql: sql, args: args})
	return nil
}

// commit commits raw, sending tx's final writes with COMMIT. It returns nil or COMMIT's error as
// [pgx.Tx.Commit] would: the error of a final write that failed is classified as a certain failure of
// COMMIT, a connection failure as an unknown outcome.
func commit(ctx context.Context, raw pgx.Tx, tx *managed) error {
	if len(tx.final) == 0 {
		return raw.Commit(ctx)
	}
	l, lazy := raw.(*lazyTx)
	if !lazy {
		for _, w := range tx.final {
			if _, err := raw.Exec(ctx, w.sql, w.args...); err != nil {
				rollback(ctx, raw)
				return &finalError{err: err}
			}
		}
		return raw.Commit(ctx)
	}
	queue := func(b *pgx.Batch) {
		for _, w := range tx.final {
			b.Queue(w.sql, w.args...)
		}
		b.Queue("COMMIT")
	}
	var br pgx.BatchResults
	if l.begun() {
		b := &pgx.Batch{}
		queue(b)
		br = l.tx.SendBatch(ctx, b)
	} else {
		var err error
		if br, err = l.send(ctx, queue); err != nil {
			// BEGIN failed in the flight that also carried COMMIT: nothing committed, unless the connection
			// failed, which leaves the outcome unknown.
			rollback(ctx, l)
			return err
		}
	}
	for range tx.final {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			if pgfail.Classify(err, pgfail.Commit) == pgfail.Unknown {
				return err
			}
			rollback(ctx, l)
			return &finalError{err: err}
		}
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && tag.String() == "ROLLBACK" {
		err = pgx.ErrTxCommitRollback
	}
	l.closed, l.tx = true, nil
	return err
}

// finalError is the error of a final write the server refused: COMMIT was skipped, nothing committed.
type finalError struct{ err error }

func (e *finalError) Error() string { return "pgcc: final write: " + e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }
