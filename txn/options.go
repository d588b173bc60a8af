package txn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	hasTxSettings  bool
	hasLocalConfig bool
	given          optionSet // which options were given, for the error of a nested Run
	maxAttempts    int
	backoff        Backoff
	lockTimeout    time.Duration
	stmtTimeout    time.Duration
	retryIf        func(error) bool
	retryLockBusy  bool
	idempotent     bool
	outermost      bool
	onRetry        func(attempt int, err error, delay time.Duration)
	obs            *observing    // nil unless an observer is attached: no events, no cost
	key            string        // idempotency key, "" for none
	retention      time.Duration // how long the key is kept
	invalid        []string
	beginQuery     string // BEGIN and SET LOCALs in one statement; "" when plain BEGIN will do
	keyInsert      string // the key's INSERT, less the attempt number; "" without a key
}

// observing is the observer of [WithObserver] and the label of [WithLabel]. It hangs from config by a
// pointer so that a Run without an observer carries 8 bytes for it, not 40.
type observing struct {
	obs       pgcc.Observation // what the transaction's handle carries (managed.top points here)
	operation string           // pgcc.OperationRun or pgcc.OperationRetry, for the events
	lookUp    time.Duration    // the attempt's key look-up, set by the attempt and taken by its event
}

// optionSet records which options were given, one bit each.
type optionSet uint32

const (
	optIsolation optionSet = 1 << iota
	optReadOnly
	optDeferrable
	optMaxAttempts
	optBackoff
	optLockTimeout
	optStatementTimeout
	optRetryLockNotAvailable
	optRetryIf
	optIdempotent
	optOnRetry
	optIdempotencyKey
	optIdempotencyRetention
	optOutermost
	optLast = optOutermost
)

// names lists the options in s by their function names, for messages.
func (s optionSet) names() string {
	var names []string
	for bit := optionSet(1); bit <= optLast; bit <<= 1 {
		if s&bit == 0 {
			continue
		}
		switch bit {
		case optIsolation:
			names = append(names, "WithIsolation")
		case optReadOnly:
			names = append(names, "ReadOnly")
		case optDeferrable:
			names = append(names, "Deferrable")
		case optMaxAttempts:
			names = append(names, "WithMaxAttempts")
		case optBackoff:
			names = append(names, "WithBackoff")
		case optLockTimeout:
			names = append(names, "WithLockTimeout")
		case optStatementTimeout:
			names = append(names, "WithStatementTimeout")
		case optRetryLockNotAvailable:
			names = append(names, "RetryLockNotAvailable")
		case optRetryIf:
			names = append(names, "RetryIf")
		case optIdempotent:
			names = append(names, "Idempotent")
		case optOnRetry:
			names = append(names, "OnRetry")
		case optIdempotencyKey:
			names = append(names, "WithIdempotencyKey")
		case optIdempotencyRetention:
			names = append(names, "WithIdempotencyRetention")
		case optOutermost:
			names = append(names, "Outermost")
		}
	}
	return strings.Join(names, ", ")
}

// WithIsolation sets the isolation level: pgx.ReadCommitted (PostgreSQL's default), pgx.RepeatableRead or
// pgx.Serializable. pgx.ReadUncommitted is accepted and behaves as READ COMMITTED, as PostgreSQL documents.
func WithIsolation(level pgx.TxIsoLevel) Option {
	return func(c *config) {
		c.given |= optIsolation
		switch level {
		case pgx.Serializable, pgx.RepeatableRead, pgx.ReadCommitted, pgx.ReadUncommitted:
			c.isolation = level
		default:
			c.invalid = append(c.invalid, fmt.Sprintf("unknown isolation level %q", string(level)))
		}
	}
}

// ReadOnly starts the transaction READ ONLY: PostgreSQL rejects its writes (SQLSTATE 25006). Such a transaction
// has nothing for COMMIT to make durable, so a COMMIT whose answer was lost is not a commit-unknown: on a pool,
// Run runs fn again on a fresh connection, as for any certain abort.
func ReadOnly() Option { return func(c *config) { c.readOnly = true; c.given |= optReadOnly } }

// Deferrable starts the transaction DEFERRABLE. Together with pgx.Serializable and [ReadOnly] it waits, at
// its first query, for a snapshot that can never cause a serialization failure: the right mode for long
// reports on a busy database. PostgreSQL ignores it in any other combination.
func Deferrable() Option { return func(c *config) { c.deferrable = true; c.given |= optDeferrable } }

// WithMaxAttempts bounds the number of attempts, the first one included: 1 never retries. The default is
// [DefaultMaxAttempts]; [UnlimitedAttempts] leaves the bound to the context. Zero or a negative number is
// rejected, so that no value silently means "forever" or "once".
func WithMaxAttempts(n int) Option {
	return func(c *config) {
		c.given |= optMaxAttempts
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
		c.given |= optBackoff
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
		c.given |= optLockTimeout
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
		c.given |= optStatementTimeout
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("statement timeout must be positive, got %v", d))
			return
		}
		c.stmtTimeout = d
	}
}

// RetryLockNotAvailable also retries SQLSTATE 55P03 (lock_not_available), which NOWAIT and lock_timeout
// raise. Use it when a busy lock is a reason to come back later rather than an answer for the caller.
func RetryLockNotAvailable() Option {
	return func(c *config) { c.retryLockBusy = true; c.given |= optRetryLockNotAvailable }
}

// RetryIf replaces the retry decision: an error for which retryable returns true is retried (while attempts
// and the context last), any other is returned. The default is [Retryable], extended by
// [RetryLockNotAvailable]. A commit whose outcome is unknown is never passed to retryable; see [Idempotent].
func RetryIf(retryable func(err error) bool) Option {
	return func(c *config) {
		c.given |= optRetryIf
		if retryable == nil {
			c.invalid = append(c.invalid, "RetryIf needs a non-nil function")
			return
		}
		c.retryIf = retryable
	}
}

// Idempotent declares that running fn twice is harmless, so a commit whose outcome is unknown
// ([pgcc.ErrCommitUnknown]) may be retried like a conflict, blindly. Prefer [WithIdempotencyKey], which finds
// out whether the commit happened instead of assuming that running fn again is harmless. With a key,
// Idempotent has no effect: an outcome the key could not settle is returned.
func Idempotent() Option { return func(c *config) { c.idempotent = true; c.given |= optIdempotent } }

// DefaultIdempotencyRetention is how long an idempotency key is kept by default: a retried request arriving
// within a day of the first is recognised. Stripe keeps its Idempotency-Key values for the same time.
const DefaultIdempotencyRetention = 24 * time.Hour

// MaxIdempotencyKeyLen bounds an idempotency key's length in bytes.
const MaxIdempotencyKeyLen = 512

// WithIdempotencyKey makes the transaction apply at most once for key: the key is recorded in the table
// pgcc.idempotency_keys (created by package migrations) by the transaction itself, in the same round trip as
// its BEGIN, so it is there exactly when the transaction's work is.
//
//   - A transaction whose key has already committed is not run: [Run] returns a [*pgcc.AlreadyAppliedError]
//     (errors.Is [pgcc.ErrAlreadyApplied]) saying when. A concurrent one with the same key waits for the first
//     (on the key's unique index) and then gets that error, or runs if the first rolled back; fn never runs
//     to a commit twice.
//   - When the connection fails while COMMIT is in flight, Run looks the key up on another connection
//     (bounded by ctx, whose last quarter, up to 5 s, Run keeps for it: it neither waits for COMMIT's answer
//     nor sends COMMIT in that time; on a *pgxpool.Pool the first of a connection it opens with the pool's
//     configuration (a second one beside it after 300 ms) and one of the pool's, each tried again while it
//     fails to connect, so that the look-up neither queues behind a saturated pool nor waits for a new
//     connection when one is idle) instead of reporting [pgcc.ErrCommitUnknown]: if this attempt committed, Run returns
//     nil and [RunValue] the value fn produced in it; if it certainly did not, Run retries (on a pool) or
//     returns a [*pgcc.ConnectionLostError]. A transaction still in progress on the lost connection is
//     waited for briefly and then ended with pg_terminate_backend, which turns a hung original into a
//     definite answer; docs/transactions.md has the details.
//
// The key must be 1 to [MaxIdempotencyKeyLen] bytes of valid UTF-8 without NUL; it is one namespace for the
// whole database, so prefix it with the operation ("transfer:" + requestKey). It is kept for
// [DefaultIdempotencyRetention] unless [WithIdempotencyRetention] says otherwise, and until
// [PurgeIdempotencyKeys] deletes it. A key makes no sense for a [ReadOnly] transaction, which applies
// nothing; the combination is rejected. Without the migration applied, Run's error says to apply it.
func WithIdempotencyKey(key string) Option {
	return func(c *config) {
		c.given |= optIdempotencyKey
		switch {
		case key == "":
			c.invalid = append(c.invalid, "idempotency key must not be empty")
		case len(key) > MaxIdempotencyKeyLen:
			c.invalid = append(c.invalid, fmt.Sprintf("idempotency key is %d bytes, more than %d", len(key), MaxIdempotencyKeyLen))
		case !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0:
			c.invalid = append(c.invalid, "idempotency key must be valid UTF-8 without NUL bytes")
		default:
			c.key = key
		}
	}
}

// WithIdempotencyRetention sets how long the key of [WithIdempotencyKey] is kept after its transaction: at
// least d, and until [PurgeIdempotencyKeys] runs. A request retried later than that runs again. d is rounded
// up to a whole millisecond; it must be positive.
func WithIdempotencyRetention(d time.Duration) Option {
	return func(c *config) {
		c.given |= optIdempotencyRetention
		if d <= 0 {
			c.invalid = append(c.invalid, fmt.Sprintf("idempotency retention must be positive, got %v", d))
			return
		}
		c.retention = d
	}
}

// Outermost asserts that Run begins a transaction of its own, whose COMMIT makes fn's work durable when Run
// returns nil (Django's atomic(durable=True)). Given a pgx.Tx, Run would only open a savepoint whose work
// commits, or not, with the enclosing transaction; with Outermost it refuses instead, with an error matching
// [pgcc.ErrInvalidArgument], and runs nothing. Use it for work whose success must not be undone by a caller's
// later rollback: a payment recorded before an e-mail is sent, say.
func Outermost() Option { return func(c *config) { c.outermost = true; c.given |= optOutermost } }

// OnRetry registers a hook called before each retry's sleep with the number of the attempt that failed
// (1 for the first), its error and the sleep about to start. It runs on the caller's goroutine; keep it
// short (a log line, a metric).
func OnRetry(hook func(attempt int, err error, delay time.Duration)) Option {
	return func(c *config) { c.onRetry = hook; c.given |= optOnRetry }
}

// WithObserver attaches o to the transaction: it receives an [pgcc.AttemptEvent] at the end of every
// attempt, and the statements that packages repo, lock and lease run on the pgx.Tx given to fn (or to a nested
// Run's fn) report their conflicts, lock waits and lease events to it, with the label of [WithLabel]. With
// [Retry] it receives the attempts. A nil o attaches nothing. A nested Run ignores it: its events go to the
// outermost Run's observer.
func WithObserver(o pgcc.Observer) Option {
	return func(c *config) {
		if c.obs == nil {
			c.obs = &observing{}
		}
		c.obs.obs.Observer = o
	}
}

// WithLabel names the transaction in the events of its observer ([WithObserver]): "checkout",
// "nightly-totals". Choose a small, fixed set of labels, since metrics are counted per label. A nested Run
// ignores it.
func WithLabel(label string) Option {
	return func(c *config) {
		if c.obs == nil {
			c.obs = &observing{}
		}
		c.obs.obs.Label = label
	}
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
	if c.obs != nil && c.obs.obs.Observer == nil {
		c.obs = nil // a label without an observer goes nowhere
	}
	if c.key != "" && c.readOnly {
		c.invalid = append(c.invalid, "an idempotency key cannot be recorded by a read-only transaction, which applies nothing")
	}
	if c.given&optIdempotencyRetention != 0 && c.given&optIdempotencyKey == 0 {
		c.invalid = append(c.invalid, "WithIdempotencyRetention without WithIdempotencyKey")
	}
	if len(c.invalid) > 0 {
		return nil, fmt.Errorf("%w: %s", pgcc.ErrInvalidArgument, strings.Join(c.invalid, "; "))
	}
	c.hasTxSettings = c.isolation != "" || c.readOnly || c.deferrable
	c.hasLocalConfig = c.lockTimeout > 0 || c.stmtTimeout > 0
	if c.hasLocalConfig || c.key != "" {
		c.beginQuery = beginQuery(c)
	}
	if c.key != "" {
		if c.retention == 0 {
			c.retention = DefaultIdempotencyRetention
		}
		c.keyInsert = keyInsert(c.key, c.retention)
	}
	return c, nil
}

// nestedError reports the options that only the outermost Run can honour, for a nested Run given any.
func (c *config) nestedError() error {
	if c.outermost {
		return fmt.Errorf("%w: txn.Outermost: db is a pgx.Tx, so Run would open a savepoint whose work commits only with the enclosing transaction", pgcc.ErrInvalidArgument)
	}
	if c.given != 0 {
		return fmt.Errorf("%w: db is a pgx.Tx, so Run would open a savepoint, which retries nothing and cannot change the transaction; %s apply only to the outermost Run", pgcc.ErrInvalidArgument, c.given.names())
	}
	return nil
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
	for _, q := range setLocals(c) {
		b.WriteString("; ")
		b.WriteString(q)
	}
	return b.String()
}

// setLocals returns the SET LOCAL statements of c's timeouts, in the order BEGIN is followed by them: one
// string with BEGIN for an eager begin ([beginQuery]), or queued behind it in a lazy transaction's first flight.
func setLocals(c *config) []string {
	var qs []string
	if c.lockTimeout > 0 {
		qs = append(qs, "SET LOCAL lock_timeout = "+strconv.FormatInt(millis(c.lockTimeout), 10))
	}
	if c.stmtTimeout > 0 {
		qs = append(qs, "SET LOCAL statement_timeout = "+strconv.FormatInt(millis(c.stmtTimeout), 10))
	}
	return qs
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
