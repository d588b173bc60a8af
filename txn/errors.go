package txn

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// Retryable reports whether PostgreSQL said the transaction may succeed if run again: a serialization failure
// (SQLSTATE 40001) or a deadlock (40P01), anywhere in err's chain, or the version conflict of a
// repo.Table.Modify queued with [Last], found by the server at COMMIT, which a fresh read settles. These
// abort the whole transaction, so only the outermost transaction can retry them.
func Retryable(err error) bool {
	var fe *finalError
	if errors.As(err, &fe) && fe.retry {
		return true
	}
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
