package txn

import (
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrRetriesExhausted reports that every allowed attempt failed with a retryable error.
	// errors.Is(err, ErrRetriesExhausted) is true for a [*RetriesExhaustedError].
	ErrRetriesExhausted = errors.New("pgcc: retries exhausted")

	// ErrCommitUnknown reports that the connection failed while COMMIT was in flight: the transaction may or may
	// not have committed, and only the database can tell. errors.Is(err, ErrCommitUnknown) is true for a
	// [*CommitUnknownError]. It is not retried unless the caller declared fn [Idempotent].
	ErrCommitUnknown = errors.New("pgcc: commit outcome unknown")

	// ErrInvalidOption reports an option that cannot be honoured (a negative timeout, zero attempts). Nothing
	// is sent to the database.
	ErrInvalidOption = errors.New("pgcc: invalid transaction option")
)

// RetriesExhaustedError is returned when the last allowed attempt failed with a retryable error. It unwraps to
// that attempt's error, so errors.As finds the *pgconn.PgError (SQLSTATE 40001 or 40P01, typically) and
// errors.Is finds, say, repo.ErrConflict.
type RetriesExhaustedError struct {
	// Attempts is the number of attempts made, the first one included.
	Attempts int
	// Err is the last attempt's error.
	Err error
}

// Error implements error.
func (e *RetriesExhaustedError) Error() string {
	return fmt.Sprintf("pgcc: gave up after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *RetriesExhaustedError) Unwrap() error { return e.Err }

// Is matches [ErrRetriesExhausted].
func (e *RetriesExhaustedError) Is(target error) bool { return target == ErrRetriesExhausted }

// InterruptedError is returned when the context ends inside a retry loop: during fn, a query, BEGIN, COMMIT or
// the sleep between attempts. errors.Is(err, context.Canceled) or errors.Is(err, context.DeadlineExceeded)
// holds, and so does errors.As for the last conflict, which a caller may want to log.
type InterruptedError struct {
	// Attempts is the number of attempts started before the context ended.
	Attempts int
	// Cause is the context's error: context.Canceled, context.DeadlineExceeded or a cause given to
	// context.WithCancelCause.
	Cause error
	// Last is the error of the last attempt before the interruption, nil if there was none.
	Last error
}

// Error implements error.
func (e *InterruptedError) Error() string {
	if e.Last == nil {
		return fmt.Sprintf("pgcc: transaction interrupted at attempt %d: %v", e.Attempts, e.Cause)
	}
	return fmt.Sprintf("pgcc: transaction interrupted at attempt %d: %v (last error: %v)", e.Attempts, e.Cause, e.Last)
}

// Unwrap returns the context's error and the last attempt's error.
func (e *InterruptedError) Unwrap() []error {
	if e.Last == nil {
		return []error{e.Cause}
	}
	return []error{e.Cause, e.Last}
}

// CommitUnknownError is returned when COMMIT was sent but no answer came back: the connection broke, the
// server shut down, or the backend was terminated. The transaction may have committed. Unwrap gives the
// connection's error.
type CommitUnknownError struct {
	// Attempts is the number of attempts made, this one included.
	Attempts int
	// Err is the error COMMIT returned.
	Err error
}

// Error implements error.
func (e *CommitUnknownError) Error() string {
	return fmt.Sprintf("pgcc: commit outcome unknown (the transaction may have committed) at attempt %d: %v", e.Attempts, e.Err)
}

// Unwrap returns the connection's error.
func (e *CommitUnknownError) Unwrap() error { return e.Err }

// Is matches [ErrCommitUnknown].
func (e *CommitUnknownError) Is(target error) bool { return target == ErrCommitUnknown }

// Retryable reports whether PostgreSQL said the transaction may succeed if run again: a serialization failure
// (SQLSTATE 40001) or a deadlock (40P01), anywhere in err's chain. These abort the whole transaction, so only
// the outermost transaction can retry them.
func Retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return pgErr.Code == pgerrcode.SerializationFailure || pgErr.Code == pgerrcode.DeadlockDetected
}

// isLockNotAvailable reports SQLSTATE 55P03, raised by NOWAIT and lock_timeout.
func isLockNotAvailable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.LockNotAvailable
}

// commitOutcomeUnknown reports whether an error from COMMIT leaves the outcome open. A *pgconn.PgError of
// ERROR severity is the server's definite answer (the transaction rolled back); an error pgx proves happened
// before anything was sent is a definite "not committed". A FATAL or PANIC report, an admin or crash shutdown,
// a connection exception (class 08) or any I/O error is not an answer.
func commitOutcomeUnknown(err error) bool {
	if pgconn.SafeToRetry(err) || errors.Is(err, pgx.ErrTxCommitRollback) {
		return false
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	severity := pgErr.SeverityUnlocalized
	if severity == "" {
		severity = pgErr.Severity
	}
	switch severity {
	case "FATAL", "PANIC":
		return true
	}
	return pgerrcode.IsConnectionException(pgErr.Code) || pgerrcode.IsOperatorIntervention(pgErr.Code) && pgErr.Code != pgerrcode.QueryCanceled
}
