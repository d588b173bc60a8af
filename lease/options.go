package lease

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// GuardOption configures [Guard]. Each kind of option may be given once: the same option twice with
// different values is refused with an error matching [pgcc.ErrInvalidArgument], never decided by the last one.
type GuardOption func(*guardConfig)

type guardConfig struct {
	noWait   bool
	timeout  time.Duration
	diag     pgcc.DBTX
	observer pgcc.Observer
	invalid  []string
}

// GuardWithObserver reports [Guard]'s wait for the lease row ([pgcc.LockWaitEvent]) and a token found fenced
// ([pgcc.LeaseEvent]) to o. A tx of a txn.Run given txn.WithObserver reports to that observer instead, with
// the transaction's label. A nil o attaches nothing.
func GuardWithObserver(o pgcc.Observer) GuardOption {
	return func(c *guardConfig) { c.observer = o }
}

// NoWait makes [Guard] fail at once with [pgcc.ErrLockNotAvailable] when a takeover of the lease is being
// written, instead of waiting for it.
func NoWait() GuardOption { return func(c *guardConfig) { c.noWait = true } }

// WithTimeout bounds [Guard]'s wait for the lease row: past d it fails with [pgcc.ErrLockNotAvailable]. A
// context deadline that comes sooner wins. d is rounded up to a whole millisecond; it must be positive and at
// most lock.MaxTimeout (about 24.8 days, PostgreSQL's largest lock_timeout): anything else is refused.
func WithTimeout(d time.Duration) GuardOption {
	return func(c *guardConfig) {
		switch {
		case d <= 0:
			c.invalid = append(c.invalid, fmt.Sprintf("lock timeout must be positive, got %v", d))
		case d > lockwait.MaxTimeout:
			c.invalid = append(c.invalid, fmt.Sprintf("lock timeout %v exceeds PostgreSQL's largest lock_timeout, %v", d, lockwait.MaxTimeout))
		case c.timeout != 0 && c.timeout != d:
			c.invalid = append(c.invalid, fmt.Sprintf("WithTimeout given twice (%v, then %v)", c.timeout, d))
		default:
			c.timeout = d
		}
	}
}

// WithDiagnostics names a second handle on the same database through which, when [Guard]'s wait fails, one
// query looks up who holds the lease row ([pgcc.LockError.Blockers]).
func WithDiagnostics(db pgcc.DBTX) GuardOption {
	return func(c *guardConfig) {
		switch {
		case lockwait.IsNil(db):
			c.invalid = append(c.invalid, "WithDiagnostics needs a non-nil handle")
		case c.diag != nil && !lockwait.SameHandle(c.diag, db):
			c.invalid = append(c.invalid, "WithDiagnostics given twice with different handles")
		default:
			c.diag = db
		}
	}
}

func newGuardConfig(opts []GuardOption) (*guardConfig, error) {
	c := &guardConfig{}
	for i, o := range opts {
		if o == nil {
			c.invalid = append(c.invalid, fmt.Sprintf("option %d is nil", i))
			continue
		}
		o(c)
	}
	if len(c.invalid) > 0 {
		return nil, fmt.Errorf("%w: lease.Guard: %s", pgcc.ErrInvalidArgument, strings.Join(c.invalid, "; "))
	}
	return c, nil
}

func (c *guardConfig) waitClause() string {
	if c.noWait {
		return " NOWAIT"
	}
	return ""
}
