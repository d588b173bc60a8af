package lease

import (
	"fmt"
	"strings"
	"time"

	"github.com/pgcc/pgcc"
)

// GuardOption configures [Guard]. Options are applied in order; a later one overrides an earlier one of the
// same kind.
type GuardOption func(*guardConfig)

type guardConfig struct {
	noWait  bool
	timeout time.Duration
	diag    pgcc.DBTX
	invalid []string
}

// NoWait makes [Guard] fail at once with [pgcc.ErrLockNotAvailable] when a takeover of the lease is being
// written, instead of waiting for it.
func NoWait() GuardOption { return func(c *guardConfig) { c.noWait = true } }

// WithTimeout bounds [Guard]'s wait for the lease row: past d it fails with [pgcc.ErrLockNotAvailable]. A
// context deadline that comes sooner wins. d is rounded up to a whole millisecond and must be positive.
func WithTimeout(d time.Duration) GuardOption {
	return func(c *guardConfig) {
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("lock timeout must be positive, got %v", d))
			return
		}
		c.timeout = d
	}
}

// WithDiagnostics names a second handle on the same database through which, when [Guard]'s wait fails, one
// query looks up who holds the lease row ([pgcc.LockError.Blockers]).
func WithDiagnostics(db pgcc.DBTX) GuardOption {
	return func(c *guardConfig) {
		if db == nil {
			c.invalid = append(c.invalid, "WithDiagnostics needs a non-nil handle")
			return
		}
		c.diag = db
	}
}

func newGuardConfig(opts []GuardOption) (*guardConfig, error) {
	c := &guardConfig{}
	for _, o := range opts {
		if o == nil {
			c.invalid = append(c.invalid, "nil option")
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
