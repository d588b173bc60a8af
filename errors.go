package pgcc

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The conditions every package reports. Each is one sentinel, matched with errors.Is whichever package or
// statement raised it: a lock timeout in a lock call, in a repo write or in the caller's own statement inside
// txn.Run all match [ErrLockNotAvailable]. Typed errors (below, and in the packages) carry the details and
// match their sentinel through an Is method.
var (
	// ErrConflict reports an optimistic compare-and-swap that found the row at another version than the one
	// the caller read, or deleted. errors.Is(err, ErrConflict) is true for a [*ConflictError].
	ErrConflict = errors.New("pgcc: version conflict")

	// ErrNotFound reports that no row has the key asked for. errors.Is(err, ErrNotFound) is true for a
	// [*NotFoundError], which also matches pgx.ErrNoRows.
	ErrNotFound = errors.New("pgcc: not found")

	// ErrLockNotAvailable reports a lock that was not granted: NOWAIT found it taken, a lock timeout ran out
	// (SQLSTATE 55P03, lock_not_available), or a try-lock failed. It matches a [*LockError], a lease held by
	// someone else, and any error carrying SQLSTATE 55P03 that pgcc returned.
	ErrLockNotAvailable = errors.New("pgcc: lock not available")

	// ErrDeadlock reports that PostgreSQL broke a cycle of lock waits by aborting the transaction (SQLSTATE
	// 40P01). Package txn retries it.
	ErrDeadlock = errors.New("pgcc: deadlock detected")

	// ErrSerialization reports a serialization failure (SQLSTATE 40001): under REPEATABLE READ or
	// SERIALIZABLE, committing the transaction would contradict a serial order. Package txn retries it.
	ErrSerialization = errors.New("pgcc: serialization failure")

	// ErrRetriesExhausted reports that every allowed attempt failed with a retryable error. errors.Is(err,
	// ErrRetriesExhausted) is true for a [*RetriesExhaustedError], which also matches the last attempt's
	// condition (ErrConflict, ErrSerialization, …).
	ErrRetriesExhausted = errors.New("pgcc: retries exhausted")

	// ErrCommitUnknown reports that the connection failed after COMMIT (or an autocommitted write) was sent
	// and before its answer arrived: the transaction may or may not have committed, and only the database can
	// tell. errors.Is(err, ErrCommitUnknown) is true for a [*CommitUnknownError] and for SQLSTATE 40003
	// (statement_completion_unknown, CockroachDB's ambiguous commit).
	ErrCommitUnknown = errors.New("pgcc: commit outcome unknown")

	// ErrAlreadyApplied reports that a transaction carrying an idempotency key was not run because a
	// transaction with the same key has already committed.
	ErrAlreadyApplied = errors.New("pgcc: already applied")

	// ErrConnectionLost reports that the connection failed before COMMIT was sent, so the transaction
	// certainly did not commit, and that it could not be retried on another connection (the handle is a single
	// connection, or the attempts ran out).
	ErrConnectionLost = errors.New("pgcc: connection lost")

	// ErrInvalidArgument reports an option or argument that cannot be honoured: a nil handle, a key of the
	// wrong length or type, a negative timeout, a table description that cannot work. Nothing was sent to the
	// database. The message names the argument.
	ErrInvalidArgument = errors.New("pgcc: invalid argument")

	// ErrHeld reports a lease held by someone else. A held lease also matches [ErrLockNotAvailable].
	ErrHeld = errors.New("pgcc: lease held")

	// ErrFenced reports that a lease is no longer the caller's: it expired, was released or was taken over, so
	// its fencing token is stale. Work protected by it must stop.
	ErrFenced = errors.New("pgcc: lease fenced off")

	// ErrNotHeld reports a lock that its holder believed held but is not: releasing a session advisory lock
	// that its session no longer holds, or a session lock whose connection died.
	ErrNotHeld = errors.New("pgcc: lock not held")

	// ErrTransactionPooling reports a feature that needs a server session of its own (a session advisory lock,
	// say) used through a connection whose server session can change between transactions, as behind
	// PgBouncer in transaction pooling mode. Use a session-mode pool or a direct connection for it.
	ErrTransactionPooling = errors.New("pgcc: needs a server session, but the connection is transaction-pooled")

	// ErrGuardFailed reports a conditional write whose condition did not hold on the row (an atomic decrement
	// that would take stock below zero, say): the row exists, and nothing was written.
	ErrGuardFailed = errors.New("pgcc: guard failed")
)

// Classify returns err so that errors.Is matches the sentinel of the condition it reports, whichever code
// raised it: an error carrying a *pgconn.PgError with SQLSTATE 40001 matches [ErrSerialization], 40P01
// [ErrDeadlock], 55P03 [ErrLockNotAvailable] and 40003 [ErrCommitUnknown]. err is returned unchanged when it
// already matches, or reports none of these; otherwise it is wrapped in an error whose message is err's and
// which unwraps to err, so errors.As still finds the *pgconn.PgError. pgcc classifies every error it
// returns; call Classify on errors of your own pgx calls to match them the same way.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	sentinel := sentinelFor(SQLState(err))
	if sentinel == nil || errors.Is(err, sentinel) {
		return err
	}
	return &classified{err: err, sentinel: sentinel}
}

func sentinelFor(code string) error {
	switch code {
	case pgerrcode.SerializationFailure:
		return ErrSerialization
	case pgerrcode.DeadlockDetected:
		return ErrDeadlock
	case pgerrcode.LockNotAvailable:
		return ErrLockNotAvailable
	case pgerrcode.StatementCompletionUnknown:
		return ErrCommitUnknown
	}
	return nil
}

// classified is an error matched to its condition's sentinel by [Classify].
type classified struct {
	err      error
	sentinel error
}

func (c *classified) Error() string        { return c.err.Error() }
func (c *classified) Unwrap() error        { return c.err }
func (c *classified) Is(target error) bool { return target == c.sentinel }

// SQLState returns the SQLSTATE of the first *pgconn.PgError in err's chain, or "" when there is none.
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Operations named in a [ConflictError]'s Op field.
const (
	// OpUpdate is an update of a row by its version: repo's Update, UpdateColumns and Modify.
	OpUpdate = "update"
	// OpDelete is a delete of a row by its version.
	OpDelete = "delete"
	// OpForceIncrement gives a row a new version without changing its values.
	OpForceIncrement = "force increment"
	// OpBulkUpdate is one row of a bulk update.
	OpBulkUpdate = "bulk update"
	// OpCheck is the caller's own compare-and-swap statement, checked after the fact.
	OpCheck = "write"
)

// ConflictError is an optimistic compare-and-swap that changed nothing because the row is no longer at the
// version the caller read. errors.Is(err, ErrConflict) holds.
//
// Actual is the version found by a statement run after the failed write, so it is at least as new as the one
// the write was compared with. Actual equals Expected only when the row was replaced (deleted and inserted
// again at the same version) between the write's snapshot and the follow-up read; running the write again may
// then succeed.
type ConflictError struct {
	// Table is the table, as its quoted SQL name ("accounts", "app"."accounts").
	Table string
	// Op is the write that conflicted: [OpUpdate], [OpDelete], [OpForceIncrement], [OpBulkUpdate] or
	// [OpCheck].
	Op string
	// KeyColumns names the key columns, in the order of Key.
	KeyColumns []string
	// Key is the row's key.
	Key Key
	// Expected is the version the caller's row carried.
	Expected int64
	// Actual is the version in the database when the conflict was examined; 0 when Deleted.
	Actual int64
	// Deleted reports that no row with Key exists any more.
	Deleted bool
	// ExpectedTime and ActualTime are Expected and Actual as timestamps, for a table whose version is a
	// timestamp column; Expected and Actual then hold them in microseconds since the Unix epoch (0 for the zero
	// time). Both are zero for integer versions.
	ExpectedTime, ActualTime time.Time
}

// Error implements error: `pgcc: conflict updating "accounts" id=42: expected version 7, found 9`.
func (e *ConflictError) Error() string {
	expected, actual := fmt.Sprint(e.Expected), fmt.Sprint(e.Actual)
	if !e.ExpectedTime.IsZero() || !e.ActualTime.IsZero() {
		expected, actual = FormatValue(e.ExpectedTime), FormatValue(e.ActualTime)
	}
	if e.Deleted {
		return fmt.Sprintf("pgcc: conflict %s %s %s: expected version %s, but the row was deleted",
			gerund(e.Op), e.Table, FormatKey(e.KeyColumns, e.Key), expected)
	}
	return fmt.Sprintf("pgcc: conflict %s %s %s: expected version %s, found %s",
		gerund(e.Op), e.Table, FormatKey(e.KeyColumns, e.Key), expected, actual)
}

// Is matches [ErrConflict].
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

func gerund(op string) string {
	switch op {
	case OpUpdate:
		return "updating"
	case OpDelete:
		return "deleting"
	case OpForceIncrement:
		return "incrementing the version of"
	case OpBulkUpdate:
		return "bulk updating"
	default:
		return "writing"
	}
}

// NotFoundError reports that no row has the key asked for. errors.Is(err, ErrNotFound) holds, and so does
// errors.Is(err, pgx.ErrNoRows), for code written against pgx.
type NotFoundError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// KeyColumns names the key columns, in the order of Key.
	KeyColumns []string
	// Key is the key looked for.
	Key Key
}

// Error implements error.
func (e *NotFoundError) Error() string {
	return fmt.Sprintf("pgcc: %s %s not found", e.Table, FormatKey(e.KeyColumns, e.Key))
}

// Is matches [ErrNotFound].
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// Unwrap returns pgx.ErrNoRows.
func (e *NotFoundError) Unwrap() error { return pgx.ErrNoRows }

// AdvisoryKey identifies an advisory lock: PostgreSQL's single bigint key space, shared by every session of a
// database. docs/pessimistic.md says which keys pgcc and golang-migrate use and how to choose yours.
type AdvisoryKey int64

// LockError reports a lock that was not granted. It says which lock, who held it when the caller allowed a
// diagnostic query, and why: Err is the *pgconn.PgError PostgreSQL reported (55P03, 40P01, or 57014 when the
// context's cancellation interrupted the wait) and Cause the context's error when the context ended.
//
// errors.Is matches [ErrLockNotAvailable] (SQLSTATE 55P03 or a failed try-lock) or [ErrDeadlock] (40P01) by
// SQLSTATE, and context.Canceled or context.DeadlineExceeded through Cause; errors.As reaches the
// *pgconn.PgError through Err.
type LockError struct {
	// Table is the locked table, a quoted identifier such as "public"."accounts"; empty for advisory locks.
	Table string
	// KeyColumns names the key columns of Table.
	KeyColumns []string
	// Keys are the keys the request asked for (row locks only).
	Keys []Key
	// Advisory is the advisory lock key, when Table is empty.
	Advisory AdvisoryKey
	// Blockers are the sessions holding the lock when it failed, oldest transaction first; nil when no
	// diagnostic handle was given or none was found.
	Blockers []Blocker
	// DiagnosticsErr is the error of the diagnostic query, or a note that it could not name the holders (rows
	// share-locked by several transactions, say).
	DiagnosticsErr error
	// Waited is how long the request waited before it failed.
	Waited time.Duration
	// Cause is the context's error when the context ended during the request, else nil.
	Cause error
	// Err is the database's error (a *pgconn.PgError), nil for a failed try-lock.
	Err error
}

// Error implements error.
func (e *LockError) Error() string {
	var b strings.Builder
	switch {
	case SQLState(e.Err) == pgerrcode.DeadlockDetected:
		b.WriteString("pgcc: deadlock while locking ")
	case e.Cause != nil:
		b.WriteString("pgcc: context ended while waiting for lock on ")
	default:
		b.WriteString("pgcc: lock not available on ")
	}
	if e.Table != "" {
		b.WriteString(e.Table)
		b.WriteString(" keys ")
		for i, k := range e.Keys {
			if i > 0 {
				b.WriteString(", ")
			}
			if len(e.KeyColumns) > 0 {
				b.WriteString(FormatKey(e.KeyColumns, k))
			} else {
				b.WriteString(k.String())
			}
		}
	} else {
		fmt.Fprintf(&b, "advisory key %d", int64(e.Advisory))
	}
	if len(e.Blockers) > 0 {
		b.WriteString("; held by ")
		for i, bl := range e.Blockers {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(bl.String())
		}
	}
	if e.Cause != nil {
		fmt.Fprintf(&b, ": %v", e.Cause)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the database's error and the context's, whichever are set.
func (e *LockError) Unwrap() []error {
	var errs []error
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	return errs
}

// Is matches [ErrLockNotAvailable] for SQLSTATE 55P03 or a failed try-lock, and [ErrDeadlock] for 40P01.
func (e *LockError) Is(target error) bool {
	switch target {
	case ErrLockNotAvailable:
		return e.Err == nil && e.Cause == nil || SQLState(e.Err) == pgerrcode.LockNotAvailable
	case ErrDeadlock:
		return SQLState(e.Err) == pgerrcode.DeadlockDetected
	}
	return false
}

// Blocker is a session that held a lock another request waited for, as pg_stat_activity described it when the
// request failed.
type Blocker struct {
	// PID is the server process id, the argument pg_terminate_backend would need.
	PID int
	// Application is the session's application_name.
	Application string
	// State is the session's state: "active", "idle in transaction", ….
	State string
	// Query is the session's current or most recent statement.
	Query string
	// XactStart is when the session's transaction began, on the database clock (zero if none).
	XactStart time.Time
	// HeldFor is how long that transaction had been running, on the database clock.
	HeldFor time.Duration
	// WaitEvent is what the session itself was waiting for, "type:event", or "" if nothing.
	WaitEvent string
}

// String describes the blocker on one line.
func (b Blocker) String() string {
	q := b.Query
	if len(q) > 80 {
		q = q[:77] + "..."
	}
	return fmt.Sprintf("pid %d (%q, %s for %v: %q)", b.PID, b.Application, b.State, b.HeldFor.Round(time.Millisecond), q)
}

// RetriesExhaustedError is returned when the last allowed attempt failed with a retryable error. It unwraps to
// that attempt's error, so errors.As finds the *pgconn.PgError (SQLSTATE 40001 or 40P01, typically) and
// errors.Is finds, say, [ErrConflict].
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

// InterruptedError is returned when the context ends inside a retry loop: during the caller's function, a
// query, BEGIN, COMMIT or the sleep between attempts. errors.Is(err, context.Canceled) or errors.Is(err,
// context.DeadlineExceeded) holds, and so does errors.As for the last attempt's error, which a caller may
// want to log.
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
		return fmt.Sprintf("pgcc: interrupted at attempt %d: %v", e.Attempts, e.Cause)
	}
	return fmt.Sprintf("pgcc: interrupted at attempt %d: %v (last error: %v)", e.Attempts, e.Cause, e.Last)
}

// Unwrap returns the context's error and the last attempt's error.
func (e *InterruptedError) Unwrap() []error {
	if e.Last == nil {
		return []error{e.Cause}
	}
	return []error{e.Cause, e.Last}
}

// CommitUnknownError is returned when COMMIT (or an autocommitted write) was sent but no answer came back:
// the connection broke, the server shut down, or the backend was terminated. The transaction may have
// committed. Unwrap gives the connection's error.
type CommitUnknownError struct {
	// Attempts is the number of attempts made, this one included.
	Attempts int
	// Err is the error the statement returned.
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
