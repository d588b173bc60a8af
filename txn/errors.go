package txn

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

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
