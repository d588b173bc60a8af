package lock

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// Strength is the row-lock mode of a SELECT … FOR …; see the table in the package documentation. The zero
// value is [ForUpdate].
type Strength int

const (
	// ForUpdate locks the rows against every other lock, update and delete: the mode for read-modify-write.
	ForUpdate Strength = iota
	// ForNoKeyUpdate is ForUpdate that still lets other transactions take [ForKeyShare], which foreign-key
	// checks do: the mode for an update that leaves the key alone.
	ForNoKeyUpdate
	// ForShare lets other transactions read-lock the rows too but blocks their updates and deletes.
	ForShare
	// ForKeyShare only blocks deletes and key changes: what a foreign-key check takes on the parent row.
	ForKeyShare
)

// String returns the SQL locking clause, "FOR UPDATE" for [ForUpdate].
func (s Strength) String() string {
	switch s {
	case ForUpdate:
		return "FOR UPDATE"
	case ForNoKeyUpdate:
		return "FOR NO KEY UPDATE"
	case ForShare:
		return "FOR SHARE"
	case ForKeyShare:
		return "FOR KEY SHARE"
	}
	return fmt.Sprintf("Strength(%d)", int(s))
}

func (s Strength) valid() bool { return s >= ForUpdate && s <= ForKeyShare }

// WaitPolicy says what a lock request does when another transaction holds a conflicting lock. The zero value is
// [Wait].
type WaitPolicy int

const (
	// Wait blocks until the lock is granted, bounded by the context and any [WithTimeout].
	Wait WaitPolicy = iota
	// NoWait fails at once with [pgcc.ErrLockNotAvailable] (SQLSTATE 55P03).
	NoWait
	// SkipLocked leaves out the rows another transaction holds: the work-queue policy of [Claim].
	SkipLocked
)

// String returns the SQL wait clause: "" for [Wait], "NOWAIT", "SKIP LOCKED".
func (w WaitPolicy) String() string {
	switch w {
	case Wait:
		return ""
	case NoWait:
		return "NOWAIT"
	case SkipLocked:
		return "SKIP LOCKED"
	}
	return fmt.Sprintf("WaitPolicy(%d)", int(w))
}

func (w WaitPolicy) valid() bool { return w >= Wait && w <= SkipLocked }

// Option configures a lock request. Options are applied in order; a later one overrides an earlier one of the
// same kind. An option a function cannot honour makes it return an error matching [pgcc.ErrInvalidArgument] before
// anything is sent.
type Option func(*config)

// config is what the options build; its zero value is the documented default.
type config struct {
	strength    Strength
	strengthSet bool
	wait        WaitPolicy
	waitSet     bool
	timeout     time.Duration
	diag        pgcc.DBTX
	where       string
	whereArgs   []any
	whereSet    bool
	invalid     []string
}

// WithStrength sets the row-lock mode; the default is [ForUpdate]. Advisory locks accept [ForUpdate]
// (exclusive) and [ForShare] (shared).
func WithStrength(s Strength) Option {
	return func(c *config) {
		if !s.valid() {
			c.invalid = append(c.invalid, fmt.Sprintf("unknown lock strength %d", int(s)))
			return
		}
		c.strength, c.strengthSet = s, true
	}
}

// WithWait sets the wait policy: lock.WithWait(lock.NoWait) fails at once, lock.WithWait(lock.SkipLocked)
// leaves out locked rows. The default is [Wait].
func WithWait(w WaitPolicy) Option {
	return func(c *config) {
		if !w.valid() {
			c.invalid = append(c.invalid, fmt.Sprintf("unknown wait policy %d", int(w)))
			return
		}
		c.wait, c.waitSet = w, true
	}
}

// WithTimeout bounds the wait for the lock: past d the request fails with [pgcc.ErrLockNotAvailable] (PostgreSQL's
// lock_timeout, SQLSTATE 55P03, set for this one statement and restored after it). A context deadline that
// comes sooner wins. d is rounded up to a whole millisecond and must be positive.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("lock timeout must be positive, got %v", d))
			return
		}
		c.timeout = d
	}
}

// WithDiagnostics names a second handle on the same database (typically the application's pool) through which,
// when a lock request fails with [pgcc.ErrLockNotAvailable], [pgcc.ErrDeadlock] or because its context ended, one query
// looks up who holds the lock. The answer is in [pgcc.LockError.Blockers]. Without it no query is made.
func WithDiagnostics(db pgcc.DBTX) Option {
	return func(c *config) {
		if db == nil {
			c.invalid = append(c.invalid, "WithDiagnostics needs a non-nil handle")
			return
		}
		c.diag = db
	}
}

// Where restricts the rows [Claim] considers to those matching predicate, a SQL boolean expression over the
// table's columns whose values come from args as $1, $2, … (Claim numbers its own parameters after them).
//
// predicate is spliced into the statement verbatim: it must be a constant written by the programmer, never
// text that came from a user. Values, including those a user chose, go in args. Only Claim accepts Where.
func Where(predicate string, args ...any) Option {
	return func(c *config) {
		if strings.TrimSpace(predicate) == "" {
			c.invalid = append(c.invalid, "Where needs a predicate")
			return
		}
		c.where, c.whereArgs, c.whereSet = predicate, args, true
	}
}

// use says which options a function accepts.
type use int

const (
	useRows use = iota
	useClaim
	useAdvisory
)

// newConfig applies opts and reports every invalid option, and every option the function cannot honour, in
// one error.
func newConfig(u use, opts []Option) (*config, error) {
	c := &config{}
	for _, o := range opts {
		if o == nil {
			c.invalid = append(c.invalid, "nil option")
			continue
		}
		o(c)
	}
	switch u {
	case useRows:
		if c.whereSet {
			c.invalid = append(c.invalid, "Where applies to Claim only")
		}
	case useClaim:
		if c.waitSet && c.wait != SkipLocked {
			c.invalid = append(c.invalid, "Claim always skips locked rows; it takes no other wait policy")
		}
		c.wait = SkipLocked
	case useAdvisory:
		if c.strength != ForUpdate && c.strength != ForShare {
			c.invalid = append(c.invalid, fmt.Sprintf("advisory locks are exclusive (ForUpdate) or shared (ForShare), not %v", c.strength))
		}
		if c.wait == SkipLocked {
			c.invalid = append(c.invalid, "advisory locks cannot skip; use NoWait or a Try function")
		}
		if c.whereSet {
			c.invalid = append(c.invalid, "Where applies to Claim only")
		}
	}
	if len(c.invalid) > 0 {
		return nil, fmt.Errorf("%w: %s", pgcc.ErrInvalidArgument, strings.Join(c.invalid, "; "))
	}
	return c, nil
}

// bounds is the part of c that bounds a lock statement.
func (c *config) bounds() lockwait.Config { return lockwait.Config{Timeout: c.timeout, Diag: c.diag} }
