package txn

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/finalwrite"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// finalWrite is a statement queued by [Final], or by package repo through [Last].
type finalWrite struct {
	sql  string
	args []any
	// failed and retry are finalwrite.Write's: what the statement's failure means, nil for a plain Final.
	failed func(ctx context.Context, conn *pgx.Conn, err error) error
	retry  bool
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

// Last marks the rest of fn's work on tx as its last: a write of package repo made through the returned
// handle (repo.Table.Modify, repo.Table.Update, repo.Table.UpdateColumns on a counter-versioned table)
// is not sent at once but queued as a [Final] write, to travel with COMMIT in the same round trip, with its
// version check enforced by the server:
//
//	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
//		_, err := accounts.Modify(ctx, txn.Last(tx), pgcc.Key{id}, func(_ context.Context, a *Account) error {
//			a.Balance -= amount
//			return nil
//		})
//		return err
//	})
//
// costs two round trips (BEGIN with the read, the write with COMMIT) where the same code on tx costs three.
// The write's compare-and-swap is sent as a statement that fails when it matches no row, so that a conflict
// makes the server skip COMMIT: nothing of the transaction commits, and Run returns the same
// [*pgcc.ConflictError] (errors.Is [pgcc.ErrConflict]) that the write sent at once would have returned, with
// its table, key, expected version, and the current version read after the rollback. A conflict of Modify,
// which would have re-read the row and tried again, is retried by Run: the whole transaction runs again, fn
// included, under Run's attempts and backoff, as [Retryable] accepts it (a predicate given by [RetryIf]
// decides instead). A conflict of Update is returned, as Update returns it. What the write returns (Modify's
// row, Update's new version in the row) is computed by the client before the write is sent: see package
// repo for what that excludes.
//
// Everything else sent through the returned handle is sent at once, as through tx: Last is a promise that
// fn sends nothing after the writes it marks, since such a statement would run before them. Writes repo
// cannot defer (see its documentation) are sent at once too. When tx is not the transaction Run began (a
// savepoint of a nested Run, a transaction begun elsewhere), Last returns tx itself, and every write is sent
// at once. The returned handle is valid for the attempt tx belongs to.
func Last(tx pgx.Tx) pgx.Tx {
	m, err := managedOf(tx, "Last")
	if err != nil || m.top == nil {
		return tx
	}
	return &lastTx{managed: m}
}

// lastTx is the handle [Last] returns: the transaction, and a way for package repo to queue a write with
// COMMIT.
type lastTx struct{ *managed }

var (
	_ pgx.Tx                               = (*lastTx)(nil)
	_ finalwrite.Queuer                    = (*lastTx)(nil)
	_ pgcc.Observed                        = (*lastTx)(nil)
	_ interface{ PendingConn() *pgx.Conn } = (*lastTx)(nil)
)

// QueueFinalWrite queues w to be sent with COMMIT (see [finalwrite.Queuer]).
func (l *lastTx) QueueFinalWrite(w finalwrite.Write) {
	l.final = append(l.final, finalWrite{sql: w.SQL, args: w.Args, failed: w.Failed, retry: w.Retry})
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
				if pgfail.ConnectionFailed(err) {
					return &finalError{err: err} // sent before COMMIT, which was never sent
				}
				return w.refused(ctx, raw.Conn(), err)
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
	for _, w := range tx.final {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			// An error the server sent as this write's answer (a FATAL too, when its backend was terminated
			// before or while the flight arrived) means it never reached COMMIT, which comes later in the same
			// flight: nothing committed. Any other failure of the connection leaves the outcome unknown.
			var pgErr *pgconn.PgError
			answered := errors.As(err, &pgErr)
			if !answered && pgfail.Classify(err, pgfail.Commit) == pgfail.Unknown {
				return err
			}
			rollback(ctx, l)
			if pgfail.ConnectionFailed(err) {
				return &finalError{err: err} // the connection is gone, and COMMIT did not run
			}
			return w.refused(ctx, l.conn, err)
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

// refused is the error of w, which the server refused (and so skipped COMMIT), once the transaction has been
// rolled back on conn.
func (w finalWrite) refused(ctx context.Context, conn *pgx.Conn, err error) error {
	if w.failed == nil {
		return &finalError{err: err}
	}
	return &finalError{err: w.failed(ctx, conn, err), retry: w.retry, mapped: true}
}

// finalError is the error of a final write the server refused: COMMIT was skipped, nothing committed. retry
// says that running the transaction again may succeed (see [finalwrite.Write]); mapped, that err is the
// error of the package that queued the write, which speaks for itself.
type finalError struct {
	err    error
	retry  bool
	mapped bool
}

func (e *finalError) Error() string {
	if e.mapped {
		return e.err.Error()
	}
	return "pgcc: final write: " + e.err.Error()
}

func (e *finalError) Unwrap() error { return e.err }
