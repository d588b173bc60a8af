package txn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
)

// txBeginner is the part of a pool or connection that can start a transaction with options.
type txBeginner interface {
	BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error)
}

var (
	_ txBeginner = (*pgxpool.Pool)(nil)
	_ txBeginner = (*pgxpool.Conn)(nil)
	_ txBeginner = (*pgx.Conn)(nil)
)

// rollbackTimeout bounds the ROLLBACK sent after a failed attempt. It runs on a context detached from the
// caller's, so that a cancelled caller still leaves a clean connection behind when the server answers.
const rollbackTimeout = 5 * time.Second

// Run runs fn in a transaction on db and commits it. If fn returns an error or panics, the transaction is
// rolled back and the error returned unchanged (the panic continues after the rollback).
//
// When db is a pool or a connection, Run starts a new transaction, the outermost one, and retries the whole of
// it (BEGIN, fn, COMMIT) while PostgreSQL reports an error that [Retryable] accepts (or the predicate given
// by [RetryIf]), up to the attempts, backoff and deadline allowed. fn must therefore be safe to run again:
// everything it does through tx is rolled back before a retry, but side effects outside the database are
// not. A retry starts from a fresh transaction, so fn must re-read what it decides on.
//
// When db is a pgx.Tx, Run is nested: fn runs in a savepoint (SAVEPOINT … RELEASE), an error rolls back to
// the savepoint and leaves the outer transaction usable, and nothing is retried, since a conflict aborts the
// outer transaction, which only its owner can retry. Options that shape a transaction (isolation, access
// mode, timeouts, retries) belong to the outermost call and are ignored in a nested one.
//
// ctx governs every statement (BEGIN, fn's queries if fn passes it on, COMMIT) and the sleeps between
// attempts: when it ends, Run returns promptly with an [*pgcc.InterruptedError]. Run never starts a sleep that
// would end past ctx's deadline; it returns at once instead.
//
// Errors, besides fn's own:
//   - [*pgcc.RetriesExhaustedError] (errors.Is [pgcc.ErrRetriesExhausted]) when the last attempt failed retryably;
//   - [*pgcc.InterruptedError] when ctx ended;
//   - [*pgcc.CommitUnknownError] (errors.Is [pgcc.ErrCommitUnknown]) when COMMIT was sent but no answer came;
//   - an error matching [pgcc.ErrInvalidArgument] for an option that cannot be honoured.
//
// The happy path costs what hand-written pgx costs: BEGIN, fn's statements, COMMIT, with lock and statement
// timeouts sent in the same round trip as BEGIN.
func Run(ctx context.Context, db pgcc.Beginner, fn func(ctx context.Context, tx pgx.Tx) error, opts ...Option) error {
	cfg, err := newConfig(opts)
	if err != nil {
		return err
	}
	if db == nil || fn == nil {
		return fmt.Errorf("%w: Run needs a database handle and a function (got %T, fn nil: %v)", pgcc.ErrInvalidArgument, db, fn == nil)
	}
	if tx, ok := db.(pgx.Tx); ok {
		return nested(ctx, tx, fn)
	}
	begin, err := beginner(db, cfg)
	if err != nil {
		return err
	}
	return loop(ctx, cfg, func(ctx context.Context) (outcome, error) {
		return attempt(ctx, begin, fn)
	})
}

// RunValue is [Run] for a fn that returns a value: the value of the attempt that committed. On error it
// returns T's zero value.
func RunValue[T any](ctx context.Context, db pgcc.Beginner, fn func(ctx context.Context, tx pgx.Tx) (T, error), opts ...Option) (T, error) {
	var out T
	err := Run(ctx, db, func(ctx context.Context, tx pgx.Tx) error {
		v, err := fn(ctx, tx)
		if err == nil {
			out = v
		}
		return err
	}, opts...)
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// Retry runs fn until it returns nil, with the policy of [Run]: the same attempts, backoff, context handling,
// hooks and errors, deciding by [Retryable] or the predicate given with [RetryIf]. It is for operations that
// are not one transaction, such as an optimistic read-modify-write whose write may conflict; fn is
// responsible for its own statements. Options that shape a transaction (isolation, access mode, timeouts)
// are rejected with [pgcc.ErrInvalidArgument].
func Retry(ctx context.Context, fn func(ctx context.Context) error, opts ...Option) error {
	cfg, err := newConfig(opts)
	if err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("%w: Retry needs a function", pgcc.ErrInvalidArgument)
	}
	if cfg.hasTxSettings || cfg.hasLocalConfig {
		return fmt.Errorf("%w: Retry runs no transaction of its own; isolation, access mode and timeouts belong to Run", pgcc.ErrInvalidArgument)
	}
	return loop(ctx, cfg, func(ctx context.Context) (outcome, error) {
		err := fn(ctx)
		if err != nil && pgconn.SafeToRetry(err) {
			return notSent, err
		}
		return failed, err
	})
}

// outcome says how an attempt's error is to be treated.
type outcome int

const (
	failed        outcome = iota // retry if the predicate says so
	notSent                      // pgx proves the failing statement never reached the server: safe to retry
	commitUnknown                // COMMIT was sent and no answer came
)

// loop is the retry policy shared by Run and Retry.
func loop(ctx context.Context, cfg *config, try func(context.Context) (outcome, error)) error {
	var last error // the last retryable error, kept for an InterruptedError
	for n := 1; ; n++ {
		if ctx.Err() != nil {
			return &pgcc.InterruptedError{Attempts: n - 1, Cause: context.Cause(ctx), Last: last}
		}
		kind, err := try(ctx)
		if err == nil {
			return nil
		}
		err = pgcc.Classify(err)
		var retry bool
		switch kind {
		case commitUnknown:
			err = &pgcc.CommitUnknownError{Attempts: n, Err: err}
			retry = cfg.idempotent
		case notSent:
			retry = true
		default:
			retry = cfg.retryable(err)
		}
		if ctx.Err() != nil {
			if kind == commitUnknown {
				return err
			}
			if last != nil && causedByContext(err) {
				// The error is the cancellation itself; keep the conflict that led here instead.
				err = last
			}
			return &pgcc.InterruptedError{Attempts: n, Cause: context.Cause(ctx), Last: err}
		}
		if !retry {
			return err
		}
		if n >= cfg.maxAttempts {
			return &pgcc.RetriesExhaustedError{Attempts: n, Err: err}
		}
		last = err
		delay := cfg.backoff.Delay(n)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= delay {
			// The next attempt could not start before the deadline: say so now rather than sleep through it.
			return &pgcc.InterruptedError{Attempts: n, Cause: context.DeadlineExceeded, Last: err}
		}
		if cfg.onRetry != nil {
			cfg.onRetry(n, err, delay)
		}
		if err := sleep(ctx, delay); err != nil {
			return &pgcc.InterruptedError{Attempts: n, Cause: err, Last: last}
		}
	}
}

// sleep waits for d or until ctx ends, whichever is first, and returns the context's cause in the second case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// beginner returns the function that starts the outermost transaction on db.
func beginner(db pgcc.Beginner, cfg *config) (func(context.Context) (pgx.Tx, error), error) {
	if b, ok := db.(txBeginner); ok {
		opts := cfg.txOptions()
		return func(ctx context.Context) (pgx.Tx, error) { return b.BeginTx(ctx, opts) }, nil
	}
	if cfg.hasTxSettings || cfg.hasLocalConfig {
		return nil, fmt.Errorf("%w: %T has no BeginTx method, so isolation, access mode and timeouts cannot be applied", pgcc.ErrInvalidArgument, db)
	}
	return db.Begin, nil
}

// attempt runs one BEGIN, fn, COMMIT. The deferred rollback also runs while a panic from fn unwinds.
func attempt(ctx context.Context, begin func(context.Context) (pgx.Tx, error), fn func(context.Context, pgx.Tx) error) (outcome, error) {
	raw, err := begin(ctx)
	if err != nil {
		return classify(err), err
	}
	tx := &managed{Tx: raw, outermost: true}
	done := false
	defer func() {
		if !done {
			rollback(ctx, raw)
			tx.rolledBack()
		}
	}()
	if err := fn(ctx, tx); err != nil {
		return classify(err), err
	}
	done = true // Commit closes tx whatever it returns.
	if err := raw.Commit(ctx); err != nil {
		tx.rolledBack()
		if commitOutcomeUnknown(err) {
			return commitUnknown, err
		}
		return classify(err), err
	}
	tx.committed(ctx)
	return failed, nil
}

func classify(err error) outcome {
	if pgconn.SafeToRetry(err) {
		return notSent
	}
	return failed
}

// nested runs fn in a savepoint of tx.
func nested(ctx context.Context, tx pgx.Tx, fn func(context.Context, pgx.Tx) error) error {
	raw, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	sp := &managed{Tx: raw}
	if parent, ok := tx.(*managed); ok {
		sp.parent = parent
	}
	released := false
	defer func() {
		if !released {
			rollback(ctx, raw)
			sp.rolledBack()
		}
	}()
	if err := fn(ctx, sp); err != nil {
		return err
	}
	released = true
	if err := raw.Commit(ctx); err != nil {
		sp.rolledBack()
		return err
	}
	sp.released()
	return nil
}

// rollback ends tx after a failure. Its error is not the caller's concern: if ROLLBACK fails, pgx closes the
// connection and a pool replaces it.
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// causedByContext reports whether err is a context's error, as pgx reports a query the context interrupted.
func causedByContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}
