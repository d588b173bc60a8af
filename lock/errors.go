package lock

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrLockNotAvailable reports a lock that was not granted: NOWAIT found it taken, the lock timeout (or the
	// context's deadline, turned into one) ran out, or a try-lock failed. errors.Is(err, ErrLockNotAvailable)
	// is true for a [*LockError] whose cause is SQLSTATE 55P03 (lock_not_available) or a failed try-lock.
	ErrLockNotAvailable = errors.New("pgcc: lock not available")

	// ErrDeadlock reports that PostgreSQL broke a cycle of lock waits by aborting this transaction (SQLSTATE
	// 40P01). errors.Is(err, ErrDeadlock) is true for such a [*LockError]; txn.Retryable is true as well, so
	// txn.Run retries the transaction.
	ErrDeadlock = errors.New("pgcc: deadlock detected")

	// ErrNotFound reports that [Row] found no row with the key (or, with SkipLocked, none it could lock).
	ErrNotFound = errors.New("pgcc: row to lock not found")

	// ErrHeld reports a lease held by someone else. errors.Is(err, ErrHeld) is true for a [*HeldError].
	ErrHeld = errors.New("pgcc: lease held")

	// ErrFenced reports that a lease is no longer the caller's: it expired, was released, or was taken over, so
	// its fencing token is stale. errors.Is(err, ErrFenced) is true for a [*FencedError].
	ErrFenced = errors.New("pgcc: lease fenced off")

	// ErrNotHeld reports that releasing a session advisory lock found it not held by the session.
	ErrNotHeld = errors.New("pgcc: advisory lock not held")

	// ErrInvalidOption reports an option or argument that cannot be honoured. Nothing is sent to the database.
	ErrInvalidOption = errors.New("pgcc: invalid lock option")
)

// LockError is returned when a lock was not granted. It says which lock, who held it when the caller allowed a
// diagnostic query ([WithDiagnostics]), and why: Err is the *pgconn.PgError PostgreSQL reported (55P03, 40P01,
// or 57014 when the context's cancellation interrupted the wait) and Cause the context's error when the
// context ended.
//
// errors.Is matches [ErrLockNotAvailable] or [ErrDeadlock] by SQLSTATE, context.Canceled or
// context.DeadlineExceeded through Cause; errors.As reaches the *pgconn.PgError through Err.
type LockError struct {
	// Table is the locked table, a quoted identifier such as "public"."accounts"; empty for advisory locks.
	Table string
	// Keys are the keys the request asked for (row locks only).
	Keys []Key
	// Advisory is the advisory lock key, when Table is empty.
	Advisory AdvisoryKey
	// Blockers are the sessions holding the lock when it failed, oldest transaction first; nil when no
	// diagnostic handle was given or none was found.
	Blockers []Blocker
	// DiagnosticsErr is the error of the diagnostic query, if it failed.
	DiagnosticsErr error
	// Cause is the context's error when the context ended during the request, else nil.
	Cause error
	// Err is the database's error (a *pgconn.PgError), nil for a failed try-lock.
	Err error
}

// Error implements error.
func (e *LockError) Error() string {
	var b strings.Builder
	switch {
	case e.code() == pgerrcode.DeadlockDetected:
		b.WriteString("pgcc: deadlock while locking ")
	case e.Cause != nil:
		b.WriteString("pgcc: context ended while waiting for lock on ")
	default:
		b.WriteString("pgcc: lock not available on ")
	}
	if e.Table != "" {
		fmt.Fprintf(&b, "%s keys %v", e.Table, e.Keys)
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
		return e.Err == nil && e.Cause == nil || e.code() == pgerrcode.LockNotAvailable
	case ErrDeadlock:
		return e.code() == pgerrcode.DeadlockDetected
	}
	return false
}

func (e *LockError) code() string {
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Blocker is a session that held a lock another request waited for, as pg_stat_activity described it when the
// request failed.
type Blocker struct {
	// PID is the server process id, the argument pg_terminate_backend would need.
	PID uint32
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

// HeldError is returned by [Leases.TryAcquire] when another holder has the lease.
type HeldError struct {
	// Name is the lease.
	Name string
	// Holder is who holds it.
	Holder string
	// Since is when the holder acquired it, on the database clock.
	Since time.Time
	// Until is when it expires unless renewed, on the database clock.
	Until time.Time
}

// Error implements error.
func (e *HeldError) Error() string {
	return fmt.Sprintf("pgcc: lease %q held by %q since %s until %s", e.Name, e.Holder,
		e.Since.Format(time.RFC3339Nano), e.Until.Format(time.RFC3339Nano))
}

// Is matches [ErrHeld].
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// FencedError is returned when a lease's token is no longer current: by [Guard] for a write from a holder whose
// lease expired or was taken over, and by [Lease.Renew] and [Lease.Release] on such a lease.
type FencedError struct {
	// Name is the lease.
	Name string
	// Token is the token the caller presented.
	Token int64
	// Current is the lease's current token, 0 if the lease does not exist.
	Current int64
	// Holder is the current holder, "" if the lease does not exist.
	Holder string
	// Expires is when the current grant expires (or expired), on the database clock.
	Expires time.Time
	// Expired reports that the current grant had expired at the time of the check.
	Expired bool
}

// Error implements error.
func (e *FencedError) Error() string {
	switch {
	case e.Current == 0:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d presented but the lease does not exist", e.Name, e.Token)
	case e.Current != e.Token:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d presented, current token is %d held by %q", e.Name, e.Token, e.Current, e.Holder)
	default:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d expired at %s", e.Name, e.Token, e.Expires.Format(time.RFC3339Nano))
	}
}

// Is matches [ErrFenced].
func (e *FencedError) Is(target error) bool { return target == ErrFenced }
