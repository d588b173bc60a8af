package txn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// Defaults of the retry policy, used when the corresponding option is not given.
const (
	// DefaultMaxAttempts is the number of attempts, the first one included, that [Run] makes by default.
	DefaultMaxAttempts = 10
	// DefaultBackoffBase is the default upper bound of the first retry's sleep.
	DefaultBackoffBase = 5 * time.Millisecond
	// DefaultBackoffCap is the default bound on any single retry's sleep.
	DefaultBackoffCap = time.Second
)

// UnlimitedAttempts, passed to [WithMaxAttempts], retries until the transaction succeeds, fails with an error
// that is not retryable, or the context ends. Only the context bounds it, so give it a deadline.
const UnlimitedAttempts = math.MaxInt

// Backoff is exponential backoff with full jitter: before retry n (n = 1 for the first retry) the caller
// sleeps a uniformly random duration in [0, min(Cap, Base·2^(n-1))). Full jitter spreads the retries of
// transactions that conflicted with each other, so they do not meet again at the same instant.
//
// The zero value means the defaults, [DefaultBackoffBase] and [DefaultBackoffCap].
type Backoff struct {
	// Base bounds the first retry's sleep; each further retry doubles the bound. Zero means
	// DefaultBackoffBase.
	Base time.Duration
	// Cap bounds every sleep. Zero means DefaultBackoffCap.
	Cap time.Duration
	// NoJitter sleeps the bound itself instead of a random duration below it. Meant for tests and for
	// reasoning about worst cases; jitter is what keeps conflicting retries apart.
	NoJitter bool
}

// Delay returns the sleep before retry n (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	base, limit := b.Base, b.Cap
	if base <= 0 {
		base = DefaultBackoffBase
	}
	if limit <= 0 {
		limit = DefaultBackoffCap
	}
	bound := min(base, limit)
	for i := 1; i < n && bound < limit; i++ {
		bound = min(2*bound, limit)
	}
	if b.NoJitter {
		return bound
	}
	return time.Duration(rand.Int64N(int64(bound) + 1))
}

func (b Backoff) validate() error {
	if b.Base < 0 || b.Cap < 0 {
		return fmt.Errorf("backoff durations must not be negative (base %v, cap %v)", b.Base, b.Cap)
	}
	if b.Base > 0 && b.Cap > 0 && b.Base > b.Cap {
		return fmt.Errorf("backoff base %v exceeds its cap %v", b.Base, b.Cap)
	}
	return nil
}

// Option configures [Run], [RunValue] and [Retry]. Options are applied in order; a later one overrides an
// earlier one of the same kind.
type Option func(*config)

// config is what the options build. Its zero value plus defaults() is the documented default behaviour.
type config struct {
	isolation      pgx.TxIsoLevel
	readOnly       bool
	deferrable     bool
	maxAttempts    int
	backoff        Backoff
	lockTimeout    time.Duration
	stmtTimeout    time.Duration
	retryIf        func(error) bool
	retryLockBusy  bool
	idempotent     bool
	onRetry        func(attempt int, err error, delay time.Duration)
	invalid        []string
	beginQuery     string
	hasTxSettings  bool
	hasLocalConfig bool
}

// WithIsolation sets the isolation level: pgx.ReadCommitted (PostgreSQL's default), pgx.RepeatableRead or
// pgx.Serializable. pgx.ReadUncommitted is accepted and behaves as READ COMMITTED, as PostgreSQL documents.
func WithIsolation(level pgx.TxIsoLevel) Option {
	return func(c *config) {
		switch level {
		case pgx.Serializable, pgx.RepeatableRead, pgx.ReadCommitted, pgx.ReadUncommitted:
			c.isolation = level
		default:
			c.invalid = append(c.invalid, fmt.Sprintf("unknown isolation level %q", string(level)))
		}
	}
}

// ReadOnly starts the transaction READ ONLY: PostgreSQL rejects its writes (SQLSTATE 25006).
func ReadOnly() Option { return func(c *config) { c.readOnly = true } }

// Deferrable starts the transaction DEFERRABLE. Together with pgx.Serializable and [ReadOnly] it waits, at
// its first query, for a snapshot that can never cause a serialization failure: the right mode for long
// reports on a busy database. PostgreSQL ignores it in any other combination.
func Deferrable() Option { return func(c *config) { c.deferrable = true } }

// WithMaxAttempts bounds the number of attempts, the first one included: 1 never retries. The default is
// [DefaultMaxAttempts]; [UnlimitedAttempts] leaves the bound to the context. Zero or a negative number is
// rejected, so that no value silently means "forever" or "once".
func WithMaxAttempts(n int) Option {
	return func(c *config) {
		if n < 1 {
			c.invalid = append(c.invalid, fmt.Sprintf("max attempts must be at least 1, got %d", n))
			return
		}
		c.maxAttempts = n
	}
}

// WithBackoff sets the sleep between attempts; see [Backoff].
func WithBackoff(b Backoff) Option {
	return func(c *config) {
		if err := b.validate(); err != nil {
			c.invalid = append(c.invalid, err.Error())
			return
		}
		c.backoff = b
	}
}

// WithLockTimeout sets PostgreSQL's lock_timeout for the transaction (SET LOCAL, sent with BEGIN in the same
// round trip): a statement that waits longer than d for a lock fails with SQLSTATE 55P03
// (lock_not_available). Add [RetryLockNotAvailable] to retry such failures. d is rounded up to a whole
// millisecond; it must be positive.
func WithLockTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("lock timeout must be positive, got %v", d))
			return
		}
		c.lockTimeout = d
	}
}

// WithStatementTimeout sets PostgreSQL's statement_timeout for the transaction (SET LOCAL, sent with BEGIN):
// a statement running longer than d is cancelled with SQLSTATE 57014 (query_canceled), which is not retried.
// d is rounded up to a whole millisecond; it must be positive.
func WithStatementTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("statement timeout must be positive, got %v", d))
			return
		}
		c.stmtTimeout = d
	}
}

// RetryLockNotAvailable also retries SQLSTATE 55P03 (lock_not_available), which NOWAIT and lock_timeout
// raise. Use it when a busy lock is a reason to come back later rather than an answer for the caller.
func RetryLockNotAvailable() Option { return func(c *config) { c.retryLockBusy = true } }

// RetryIf replaces the retry decision: an error for which retryable returns true is retried (while attempts
// and the context last), any other is returned. The default is [Retryable], extended by
// [RetryLockNotAvailable]. A commit whose outcome is unknown is never passed to retryable; see [Idempotent].
func RetryIf(retryable func(err error) bool) Option {
	return func(c *config) {
		if retryable == nil {
			c.invalid = append(c.invalid, "RetryIf needs a non-nil function")
			return
		}
		c.retryIf = retryable
	}
}

// Idempotent declares that running fn twice is harmless (it writes under an idempotency key, say), so a
// commit whose outcome is unknown ([ErrCommitUnknown]) may be retried like a conflict.
func Idempotent() Option { return func(c *config) { c.idempotent = true } }

// OnRetry registers a hook called before each retry's sleep with the number of the attempt that failed
// (1 for the first), its error and the sleep about to start. It runs on the caller's goroutine; keep it
// short (a log line, a metric).
func OnRetry(hook func(attempt int, err error, delay time.Duration)) Option {
	return func(c *config) { c.onRetry = hook }
}

// newConfig applies opts and reports every invalid option in one error.
func newConfig(opts []Option) (*config, error) {
	c := &config{maxAttempts: DefaultMaxAttempts}
	for _, o := range opts {
		if o == nil {
			c.invalid = append(c.invalid, "nil option")
			continue
		}
		o(c)
	}
	if len(c.invalid) > 0 {
		return nil, fmt.Errorf("%w: %s", pgcc.ErrInvalidArgument, strings.Join(c.invalid, "; "))
	}
	c.hasTxSettings = c.isolation != "" || c.readOnly || c.deferrable
	c.hasLocalConfig = c.lockTimeout > 0 || c.stmtTimeout > 0
	if c.hasLocalConfig {
		c.beginQuery = beginQuery(c)
	}
	return c, nil
}

// beginQuery builds "BEGIN …; SET LOCAL …" so that the timeouts cost no round trip of their own. The values
// are integers formatted here, never caller text.
func beginQuery(c *config) string {
	var b strings.Builder
	b.WriteString("BEGIN")
	if c.isolation != "" {
		b.WriteString(" ISOLATION LEVEL ")
		b.WriteString(string(c.isolation))
	}
	if c.readOnly {
		b.WriteString(" READ ONLY")
	}
	if c.deferrable {
		b.WriteString(" DEFERRABLE")
	}
	if c.lockTimeout > 0 {
		b.WriteString("; SET LOCAL lock_timeout = ")
		b.WriteString(strconv.FormatInt(millis(c.lockTimeout), 10))
	}
	if c.stmtTimeout > 0 {
		b.WriteString("; SET LOCAL statement_timeout = ")
		b.WriteString(strconv.FormatInt(millis(c.stmtTimeout), 10))
	}
	return b.String()
}

// millis rounds d up to whole milliseconds, the unit PostgreSQL reads a bare number in.
func millis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func (c *config) txOptions() pgx.TxOptions {
	o := pgx.TxOptions{IsoLevel: c.isolation, BeginQuery: c.beginQuery}
	if c.readOnly {
		o.AccessMode = pgx.ReadOnly
	}
	if c.deferrable {
		o.DeferrableMode = pgx.Deferrable
	}
	return o
}

func (c *config) retryable(err error) bool {
	if c.retryIf != nil {
		return c.retryIf(err)
	}
	return Retryable(err) || c.retryLockBusy && isLockNotAvailable(err)
}
