package pgcc_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
)

func TestHTTPStatus(t *testing.T) {
	t.Parallel()
	conflict := &pgcc.ConflictError{Table: `"t"`, Op: pgcc.OpUpdate, Key: pgcc.Key{1}, Expected: 1, Actual: 2}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 200},
		{"missing If-Match", fmt.Errorf("%w: no If-Match", pgcc.ErrPreconditionRequired), 428},
		{"bad argument", fmt.Errorf("%w: key", pgcc.ErrInvalidArgument), 400},
		{"stale version", conflict, 412},
		{"deleted row", &pgcc.ConflictError{Deleted: true}, 412},
		{"conflicts retries could not resolve", &pgcc.RetriesExhaustedError{Attempts: 3, Err: conflict}, 409},
		{"not found", &pgcc.NotFoundError{Table: `"t"`, Key: pgcc.Key{1}}, 404},
		{"NOWAIT", &pgcc.LockError{Err: &pgconn.PgError{Code: pgerrcode.LockNotAvailable}}, 423},
		{"lock timeout of a plain statement", pgcc.Classify(&pgconn.PgError{Code: pgerrcode.LockNotAvailable}), 423},
		{"lease held", fmt.Errorf("%w (%w)", pgcc.ErrHeld, pgcc.ErrLockNotAvailable), 409},
		{"lease fenced", pgcc.ErrFenced, 409},
		{"serialization failure", pgcc.Classify(&pgconn.PgError{Code: pgerrcode.SerializationFailure}), 409},
		{"deadlock", pgcc.Classify(&pgconn.PgError{Code: pgerrcode.DeadlockDetected}), 409},
		{"guard failed", pgcc.ErrGuardFailed, 409},
		{"already applied", pgcc.ErrAlreadyApplied, 409},
		{"deadline", &pgcc.InterruptedError{Attempts: 2, Cause: context.DeadlineExceeded, Last: conflict}, 504},
		{"cancelled", fmt.Errorf("query: %w", context.Canceled), 503},
		{"connection lost", pgcc.ErrConnectionLost, 503},
		{"commit unknown", &pgcc.CommitUnknownError{Attempts: 1, Err: errors.New("EOF")}, 500},
		{"anything else", errors.New("boom"), 500},
	} {
		if got := pgcc.HTTPStatus(tc.err); got != tc.want {
			t.Errorf("%s: HTTPStatus(%v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}
